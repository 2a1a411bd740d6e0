"""``results/*.json`` → the report files: the lab report and the article, zh + en, Markdown + HTML.

Input/output only: read the arena's result files, compute verdicts and figures once, hand them to the two
assemblers (:mod:`lorafam.report.blocks` for the lab report, :mod:`lorafam.report.article` for the article), and
write every file atomically. Deterministic: the same result files give byte-identical output (no clock, sorted
inputs, PNGs without timestamps). ``report-data.json`` holds every number either edition states.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lorafam.arena.results import atomic_write_json
from lorafam.core.checkpoint import atomic_write_text
from lorafam.report import claims as C
from lorafam.report import plots
from lorafam.report.blocks import build_blocks, league
from lorafam.report.data import ReportData, load
from lorafam.report.render import to_html, to_markdown
from lorafam.report.text import UI, series_name

LANGS = ("en", "zh")


def make_figures(data: ReportData) -> dict[str, bytes | None]:
    """The lab report's figures, by name (``None`` where there is nothing to plot)."""
    figs: dict[str, bytes | None] = {"tree": plots.family_tree(), "memory": plots.memory(data)}
    for t in data.tasks:
        figs[f"curve:{t}"] = plots.accuracy_curves(data, t)
        figs[f"pareto:{t}"] = plots.pareto(data, t)
    if "alora_ttft" in data.benchmarks:
        series = C._ttft_series(data.benchmarks["alora_ttft"])
        figs["ttft"] = plots.xy_series(
            {series_name("en", k): v for k, v in series.items()}, "history (tokens)", "TTFT (s)"
        )
    if "s2attn" in data.benchmarks:
        figs["s2attn"] = plots.xy_series(
            C.s2_series(data.benchmarks["s2attn"]), "context length (tokens)", "training step (s)"
        )
    return figs


def write_png(path: Path, png: bytes) -> None:
    """Write PNG bytes atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(png)
    os.replace(tmp, path)


def _command(data: ReportData) -> str:
    members = ",".join(sorted({r.member for r in data.rows if r.impl == "lorafam"}))
    return (
        f"lorafam arena --budget {data.budget}"
        + (f" --members {members}" if data.budget != "quick" and members else "")
        + f" --results {data.folder.parent}\nlorafam report --results {data.folder.parent}"
    )


def build_report(
    results: str | Path = "arena-results",
    out: str | Path | None = None,
    budget: str | None = None,
    bench_dir: str | Path | None = "benchmarks/results",
) -> dict[str, Path]:
    """Write the lab report; returns {"en.md", "en.html", "zh.md", "zh.html", "data"} → path."""
    data = load(results, budget, bench_dir if bench_dir and Path(bench_dir).is_dir() else None)
    out_dir = Path(out) if out else data.folder.parent / "report"
    verdicts = C.check_all(data) + [C.Verdict(cid, v, cid, {}, cite) for cid, v, cite in C.BIBLIO]
    figures = make_figures(data)
    command = _command(data)
    paths: dict[str, Path] = {}
    for name, png in figures.items():
        if png:
            write_png(out_dir / "figures" / f"{name.replace(':', '-')}.png", png)
    for lang in LANGS:
        blocks = build_blocks(lang, data, verdicts, figures, command)
        md, page = to_markdown(blocks), to_html(blocks, UI[lang]["title"], lang)
        paths[f"{lang}.md"] = out_dir / f"lorafam-report.{lang}.md"
        paths[f"{lang}.html"] = out_dir / f"lorafam-report.{lang}.html"
        atomic_write_text(paths[f"{lang}.md"], md)
        atomic_write_text(paths[f"{lang}.html"], page)
    paths["data"] = out_dir / "report-data.json"
    atomic_write_json(paths["data"], report_data(data, verdicts))
    return paths


def report_data(data: ReportData, verdicts: list[C.Verdict]) -> dict[str, Any]:
    """The numbers behind both editions (the league table's raw values and every verdict with its arguments)."""
    keys, rows, raw = league(data)
    return {
        "budget": data.budget,
        "tasks": data.tasks,
        "seeds": data.seeds,
        "league": {"keys": keys, "rows": rows, "raw": raw},
        "claims": [v.__dict__ for v in verdicts],
        "failed": [r.run_info.run_id for r in data.failed],
        "kept_apart": [n for n, _ in data.kept_apart],
        "problems": data.problems,
    }
