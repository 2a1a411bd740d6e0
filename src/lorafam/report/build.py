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
from lorafam.report.article import TONES, build_article
from lorafam.report.blocks import build_blocks
from lorafam.report.data import ReportData, load
from lorafam.report.league import league
from lorafam.report.render import to_html, to_markdown
from lorafam.report.sources import DRAFT_NUMBERS, SOURCES
from lorafam.report.text import UI, series_name
from lorafam.report.wechat import to_article_markdown, to_wechat_html

LANGS = ("en", "zh")
EDITIONS = ("lab", "article")


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
    tone: str = "lively",
    inline_images: bool = False,
    editions: tuple[str, ...] = EDITIONS,
) -> dict[str, Path]:
    """Write the lab report and the article; returns {"en.md", "en.html", "zh.md", "zh.html", "article.zh.html",
    "article.zh.md", "article.en.html", "article.en.md", "data"} → path.

    ``tone`` is the article's voice ("lively" or "plain"); ``inline_images`` embeds the article's figures as
    ``data:`` URIs instead of pointing at the numbered PNG files beside it. ``editions`` limits the output to
    "lab" or "article" (``report-data.json`` is always written).
    """
    if tone not in TONES:
        raise ValueError(f"unknown tone {tone!r}; valid: {', '.join(TONES)}")
    if not editions or set(editions) - set(EDITIONS):
        raise ValueError(f"unknown editions {editions!r}; valid: {', '.join(EDITIONS)}")
    data = load(results, budget, bench_dir if bench_dir and Path(bench_dir).is_dir() else None)
    out_dir = Path(out) if out else data.folder.parent / "report"
    verdicts = C.check_all(data) + [C.Verdict(cid, v, cid, {}, cite) for cid, v, cite in C.BIBLIO]
    command = _command(data)
    paths: dict[str, Path] = {}
    if "lab" in editions:
        write_lab(out_dir, data, verdicts, command, paths)
    article = {}
    if "article" in editions:
        for lang in ("zh", "en"):
            article[lang] = write_article(out_dir, lang, tone, data, verdicts, command, inline_images, paths)
    paths["data"] = out_dir / "report-data.json"
    record = report_data(data, verdicts)
    record["article"] = {
        "tone": tone,
        "facts": {lang: a["facts"] for lang, a in article.items()},
        "figures": {lang: a["figures"] for lang, a in article.items()},
        "sources": {k: {"cite": s.cite, "numbers": s.numbers} for k, s in SOURCES.items()},
        "draft": DRAFT_NUMBERS,
        "interval_level_percent": 95,  # every interval is a 2.5-97.5 % bootstrap quantile pair (arena.stats)
    }
    atomic_write_json(paths["data"], record)
    return paths


def write_lab(
    out_dir: Path, data: ReportData, verdicts: list[C.Verdict], command: str, paths: dict[str, Path]
) -> None:
    """``lorafam-report.<lang>.md`` / ``.html`` and ``figures/``, both languages."""
    figures = make_figures(data)
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


def write_article(
    out_dir: Path,
    lang: str,
    tone: str,
    data: ReportData,
    verdicts: list[C.Verdict],
    command: str,
    inline_images: bool,
    paths: dict[str, Path],
) -> dict[str, Any]:
    """``lorafam-article.<lang>.html`` / ``.md`` and its numbered figures in ``article-<lang>/`` (upload order)."""
    blocks, art = build_article(lang, tone, data, verdicts, command)
    folder = f"article-{lang}"
    fig_dir = out_dir / folder
    if (
        fig_dir.is_dir()
    ):  # figures of an earlier build that this one no longer draws would mislead the upload order
        for old in fig_dir.glob("*.png"):
            old.unlink()
    for b in art.figures:
        write_png(fig_dir / f"{b.name}.png", b.png or b"")
    title = blocks[0].text
    paths[f"article.{lang}.html"] = out_dir / f"lorafam-article.{lang}.html"
    paths[f"article.{lang}.md"] = out_dir / f"lorafam-article.{lang}.md"
    atomic_write_text(paths[f"article.{lang}.html"], to_wechat_html(blocks, title, lang, folder, inline_images))
    atomic_write_text(paths[f"article.{lang}.md"], to_article_markdown(blocks, folder))
    return {"facts": art.facts, "figures": [f"{folder}/{b.name}.png" for b in art.figures]}


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
