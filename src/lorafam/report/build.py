"""``results/*.json`` → the LoRA family history article, zh + en, Markdown + self-contained HTML.

Deterministic: the same result files give byte-identical output (no clock, sorted inputs, PNGs without
timestamps). The league table is also written as ``report-data.json`` so tests can re-derive it from the runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lorafam.arena.results import atomic_write_json
from lorafam.core.checkpoint import atomic_write_text
from lorafam.report import claims as C
from lorafam.report import plots
from lorafam.report.data import ReportData, Row, load, noise_floor, spread
from lorafam.report.render import Block, to_html, to_markdown
from lorafam.report.text import CLAIMS, REASONS, UI, VERDICTS, idea, say, series_name

LANGS = ("en", "zh")


def _f(v: float | None, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def acc_cell(row: Row, task: str) -> str:
    acc = row.accuracies(task)
    if not acc:
        return (
            "failed" if any(r.run_info.task == task and r.run_info.status == "failed" for r in row.runs) else "—"
        )
    mean = 100 * sum(acc) / len(acc)
    sd = spread(acc)
    return f"{mean:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def league(data: ReportData) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """(header keys, formatted rows, raw rows). Raw rows hold the unformatted numbers for traceability."""
    keys = (
        ["member", "params"]
        + [f"acc:{t}" for t in data.tasks]
        + ["kl", "step", "tok", "rss", "size", "decode", "merge"]
    )
    rows, raw = [], []
    for row in data.rows:
        dec, dec_base = row.mean("decode_tokens_per_s"), row.mean("decode_tokens_per_s_base")
        r = {
            "impl": row.impl,
            "member": row.member,
            "params": row.mean("trainable_params"),
            **{f"acc:{t}": row.accuracies(t) for t in data.tasks},
            "kl": row.mean("forgetting_kl"),
            "step": row.mean("seconds_per_step"),
            "tok": row.mean("tokens_per_second"),
            "rss": row.mean_run("peak_rss_mb"),
            "size": row.mean("adapter_bytes"),
            "decode": dec,
            "decode_base": dec_base,
            "merge": row.mean("merge_seconds"),
        }
        raw.append(r)
        rows.append(
            [
                row.label,
                "—" if r["params"] is None else f"{int(r['params']):,}",
                *[acc_cell(row, t) for t in data.tasks],
                _f(r["kl"], ".3f"),
                _f(r["step"], ".2f"),
                _f(r["tok"], ".0f"),
                _f(r["rss"], ".0f"),
                _f(r["size"] / 1e6 if r["size"] else None, ".2f"),
                "—" if dec is None else f"{dec:.1f}" + (f" ({dec / dec_base:.2f}×)" if dec_base else ""),
                _f(r["merge"], ".3f"),
            ]
        )
    return keys, rows, raw


def _headers(lang: str, data: ReportData) -> list[str]:
    u = UI[lang]
    accs = [("exact match " if lang == "en" else "完全匹配率 ") + f"{t} (%)" for t in data.tasks]
    return [
        u["col_member"],
        u["col_params"],
        *accs,
        u["col_kl"],
        u["col_step"],
        u["col_tok"],
        u["col_rss"],
        u["col_size"],
        u["col_decode"],
        u["col_merge"],
    ]


def _floor_points(data: ReportData) -> float:
    lora = data.row("lorafam", "lora")
    task = C.primary_task(data)
    if lora and lora.accuracies(task):
        n = max(r.train_info.test_items for r in lora.ok_runs(task))
        return 100 * noise_floor(lora.accuracies(task), n)
    return 0.0


def chapter(lang: str, data: ReportData, member: Any) -> list[Block]:
    u = UI[lang]
    blocks = [
        Block("h3", f"{member.name} — {member.title} ({member.year})"),
        Block(
            "p",
            say(
                lang,
                UI,
                "chapter_what",
                idea=member.idea,
                origin=member.origin,
                venue=member.venue,
                arxiv=member.arxiv,
            ),
        ),
    ]
    row, lora = data.row("lorafam", member.name), data.row("lorafam", "lora")
    if row is None or not row.ok_runs():
        blocks.append(Block("p", u["no_results"]))
        return blocks
    acc_text = say(lang, UI, "acc_text", tasks=", ".join(f"{t} {acc_cell(row, t)}%" for t in data.tasks))
    probe_errors = row.extra("probe_errors") or {}
    if row.mean("merge_seconds") is not None:
        merge = say(lang, UI, "merge_yes", s=row.mean("merge_seconds"))
    elif "merge" in probe_errors:
        merge = say(lang, UI, "merge_failed", why=probe_errors["merge"][:120])
    else:
        merge = say(lang, UI, "merge_no", why=row.extra("not_mergeable_reason") or "—")
    step = row.mean("seconds_per_step")
    lstep = lora.mean("seconds_per_step") if lora else None
    size = row.mean("adapter_bytes")
    blocks.append(
        Block(
            "p",
            say(
                lang,
                UI,
                "chapter_nums",
                acc_text=acc_text,
                params=int(row.mean("trainable_params")),
                pct=100 * row.mean("trainable_params") / row.mean("total_params"),
                step=step,
                step_ratio=step / lstep if step and lstep else None,
                rss=row.mean_run("peak_rss_mb"),
                kl=row.mean("forgetting_kl"),
                mb=size / 1e6 if size else None,
                merge=merge,
            ),
        )
    )
    start = row.extra("forgetting_kl_start")
    if isinstance(start, (int, float)) and start > 0.01:
        blocks.append(Block("p", say(lang, UI, "chapter_kl_start", start=start, kl=row.mean("forgetting_kl"))))
    peer = data.row("peft", member.name)
    if peer is not None and peer.ok_runs():
        pstep = peer.mean("seconds_per_step")
        blocks.append(
            Block(
                "p",
                say(
                    lang,
                    UI,
                    "chapter_peft",
                    step=pstep,
                    ratio=step / pstep if step and pstep else None,
                    acc_text=say(
                        lang, UI, "acc_text", tasks=", ".join(f"{t} {acc_cell(peer, t)}%" for t in data.tasks)
                    ),
                ),
            )
        )
    blocks.append(Block("p", u["pick_intro"] + pick(lang, data, member, row, lora)))
    return blocks


def _named(lang: str, args: dict[str, Any]) -> dict[str, Any]:
    """Verdict arguments with benchmark series keys (``*_name``) put into words for ``lang``."""
    return {k: series_name(lang, v) if k.endswith("_name") and isinstance(v, str) else v for k, v in args.items()}


def _first_loss(row: Row, task: str) -> float | None:
    """Mean training loss at step 1 (before any update) over the row's runs on ``task``."""
    vals = [r.train_info.loss_curve[0][1] for r in row.ok_runs(task) if r.train_info.loss_curve]
    return sum(vals) / len(vals) if vals else None


def pick(lang: str, data: ReportData, member: Any, row: Row, lora: Row | None) -> str:
    """ "When to pick it", from explicit comparisons with LoRA (beyond the noise floor)."""
    if member.name == "lora" or lora is None:
        return UI[lang]["pick_reference"]
    task = C.primary_task(data)
    pros, cons = [], []
    ratio = row.mean("trainable_params") / max(lora.mean("trainable_params") or 1, 1)
    if ratio < 0.5:
        pros.append(say(lang, UI, "pick_params", ratio=ratio))
    cmp = C.compare(row, lora, task)
    if cmp and cmp[0] > cmp[1]:
        pros.append(say(lang, UI, "pick_acc", diff=100 * cmp[0], floor=100 * cmp[1], task=task))
    elif cmp and cmp[0] < -cmp[1]:
        cons.append(say(lang, UI, "pick_worse", diff=100 * cmp[0], floor=100 * cmp[1], task=task))
    kl, lkl = row.mean("forgetting_kl"), lora.mean("forgetting_kl")
    if kl is not None and lkl is not None and kl < 0.7 * lkl and lkl - kl > 0.01:
        if C.learned(row, data, task):
            pros.append(say(lang, UI, "pick_forget", kl=kl, lkl=lkl))
        else:  # forgetting little by learning little is no merit
            gain, floor = C.compare(row, data.row("base", "base"), task) or (0.0, 0.0)
            cons.append(say(lang, UI, "pick_unmoved", kl=kl, gain=100 * gain, floor=100 * floor, task=task))
    s, ls = row.mean("seconds_per_step"), lora.mean("seconds_per_step")
    # one run each cannot resolve small speed differences (identical runs on a shared CPU differ by 10-20%)
    slow_at = 1.3 if min(len(row.ok_runs()), len(lora.ok_runs())) >= 2 else 1.5
    if s and ls and s / ls > slow_at:
        cons.append(say(lang, UI, "pick_slow", ratio=s / ls))
    first, lfirst = _first_loss(row, task), _first_loss(lora, task)
    if first is not None and lfirst is not None and first > 2 * lfirst + 0.5:
        # step 1's loss is computed before any update: a gap there comes from a different training-time forward
        cfg = row.ok_runs(task)[0].train_info.adapter_config
        key = "pick_s2_short" if cfg.get("s2attn") else "pick_first_loss"
        cons.append(say(lang, UI, key, first=first, lfirst=lfirst, ratio=cfg.get("group_size_ratio"), task=task))
    if row.mean("merge_seconds") is None and any(r.train_info.mergeable is False for r in row.ok_runs()):
        cons.append(UI[lang]["pick_nomerge"])
    sep = "; " if lang == "en" else "；"
    text = sep.join(pros) if pros else say(lang, UI, "pick_nothing", arxiv=member.arxiv)
    text = text[:1].upper() + text[1:]
    end = "." if lang == "en" else "。"
    if pros:
        text += end
    if cons:
        text += (" But " if lang == "en" else "但") + sep.join(cons) + end
    return text


def build_blocks(
    lang: str, data: ReportData, verdicts: list[C.Verdict], figures: dict[str, bytes | None], command: str
) -> list[Block]:
    from lorafam.family import family

    u = UI[lang]
    runs = [r for row in data.rows for r in row.runs]
    ok = sum(r.run_info.status == "ok" for r in runs)
    b = [
        Block("h1", u["title"]),
        Block(
            "p",
            say(
                lang,
                UI,
                "lede",
                budget=data.budget,
                runs=len(runs),
                ok=ok,
                failed=len(data.failed),
                skipped=len(data.skipped),
            ),
        ),
    ]
    if data.budget == "quick" or len(data.seeds) < 2:
        b.append(
            Block(
                "p",
                say(
                    lang,
                    UI,
                    "cannot_rank",
                    budget=data.budget,
                    steps=data.settings.get("steps"),
                    seeds=len(data.seeds),
                    items=data.settings.get("eval_items"),
                    floor=_floor_points(data),
                ),
            )
        )
    b += [
        Block("h2", u["tree"]),
        Block("p", u["tree_intro"]),
        Block("figure", u["fig_tree"], png=figures["tree"], name="tree"),
    ]
    b.append(
        Block(
            "table",
            headers=[
                u["col_member"],
                u["col_year"],
                u["col_origin"],
                u["col_venue"],
                u["col_parent"],
                u["col_idea"],
            ],
            rows=[[m.name, str(m.year), m.origin, m.venue, m.parent or "—", idea(lang, m)] for m in family()],
        )
    )
    b.append(Block("h2", u["chapters"]))
    for m in family():
        b += chapter(lang, data, m)
    _, rows, _ = league(data)
    b += [
        Block("h2", u["league"]),
        Block("p", say(lang, UI, "league_intro", n=data.settings.get("forget_prompts"))),
        Block("table", headers=_headers(lang, data), rows=rows),
    ]
    b.append(Block("h2", u["plots"]))
    for key, caption in (("curve", u["fig_curve"]), ("pareto", u["fig_pareto"]), ("memory", u["fig_mem"])):
        for name, png in sorted((k, v) for k, v in figures.items() if k.startswith(key)):
            b.append(
                Block(
                    "figure",
                    f"{caption} — {name.split(':')[-1]}" if ":" in name else caption,
                    png=png,
                    name=name.replace(":", "-"),
                )
                if png
                else Block("p", say(lang, UI, "no_fig", why=u["pareto_none"]))
            )
    for key, cap in (("ttft", "fig_ttft"), ("s2attn", "fig_s2")):
        bench = data.benchmarks.get("alora_ttft" if key == "ttft" else "s2attn")
        if figures.get(key):
            b.append(Block("figure", say(lang, UI, cap, file=bench["file"]), png=figures[key], name=key))
        else:
            b.append(
                Block(
                    "p",
                    say(lang, UI, cap, file="benchmarks/results")
                    + " — "
                    + say(lang, UI, "no_fig", why="no results file" if lang == "en" else "没有结果文件"),
                )
            )
    b += [
        Block("h2", u["claims"]),
        Block(
            "table",
            headers=[u["col_claim"], u["col_verdict"], u["col_evidence"], u["col_source"]],
            rows=[
                [
                    CLAIMS[lang][v.claim],
                    VERDICTS[lang][v.verdict],
                    say(lang, REASONS, v.reason, **_named(lang, v.args)),
                    v.cite or "—",
                ]
                for v in verdicts
            ],
        ),
    ]
    est = C.estimates_table()
    if est:
        b += [
            Block("p", u["estimates"]),
            Block(
                "table",
                headers=[u["col_model"], u["col_bits"], u["col_weights"], u["col_total"]],
                rows=[[m, str(bits), f"{w:.1f}", f"{t:.1f}"] for m, bits, w, t in est],
            ),
        ]
    done = {r.run_info.run_id for row in data.rows for r in row.runs}
    missing = [rid for rid in data.manifest.get("runs", []) if rid not in done]
    if data.failed or data.skipped or missing:
        b += [
            Block("h2", u["failed"]),
            Block(
                "table",
                headers=[u["col_run"], u["col_status"], u["col_error"]],
                rows=[
                    [r.run_info.run_id, r.run_info.status, r.run_info.error[:200]]
                    for r in data.failed + data.skipped
                ]
                + [[rid, u["not_run"], u["not_run_why"]] for rid in missing],
            ),
        ]
    probe_errors = [
        f"{r.run_info.run_id}: {k}: {v}"
        for row in data.rows
        for r in row.ok_runs()
        for k, v in sorted((r.train_info.extra.get("probe_errors") or {}).items())
    ]
    if probe_errors:
        b += [Block("p", u["probe_errors"]), Block("list", items=probe_errors)]
    if data.kept_apart:
        b += [
            Block("h2", u["kept"]),
            Block("p", u["kept_intro"]),
            Block(
                "list",
                items=[
                    f"{name}: lorafam {r.meta_info.lorafam_version}, "
                    f"{r.meta_info.machine.get('cpu', '?')} ({r.meta_info.machine.get('cores', '?')} cores)"
                    for name, r in data.kept_apart
                ],
            ),
        ]
    b += notes(lang, data, command)
    return b


def notes(lang: str, data: ReportData, command: str) -> list[Block]:
    u, m = UI[lang], data.meta
    machine = m.get("machine", {})
    settings = ", ".join(
        f"{k}={v}" for k, v in sorted(data.settings.items()) if k not in ("user_task", "bf16_probe")
    )
    pk = ", ".join(f"{k} {v}" for k, v in sorted(m.get("packages", {}).items()))
    probe = data.settings.get("bf16_probe") or {}
    if data.settings.get("bf16") is True:
        regime = u["regime_bf16"]
    else:
        ratio = probe.get("bf16_matmul_s", 0) / probe["fp32_matmul_s"] if probe.get("fp32_matmul_s") else None
        why = say(lang, UI, "regime_why", ratio=ratio) if ratio else "bf16: false"
        regime = say(lang, UI, "regime_fp32", why=why)
    b = [
        Block("h2", u["notes"]),
        Block("p", say(lang, UI, "notes_harness", regime=regime)),
        Block(
            "p",
            say(
                lang,
                UI,
                "notes_budget",
                budget=data.budget,
                tasks=", ".join(data.tasks),
                seeds=", ".join(map(str, data.seeds)),
                settings=settings,
            ),
        ),
        Block(
            "p",
            say(
                lang,
                UI,
                "notes_machine",
                cpu=machine.get("cpu"),
                cores=machine.get("cores"),
                ram=machine.get("ram_gib"),
                threads=data.settings.get("threads"),
                device=data.manifest.get("device", "cpu"),
                version=m.get("lorafam_version"),
                commit=(m.get("git_commit") or "?")[:10],
                dirty=u["dirty"] if m.get("git_dirty") else "",
                packages=pk,
                python=m.get("python"),
            ),
        ),
    ]
    if data.manifest.get("seconds"):
        b.append(Block("p", say(lang, UI, "notes_wall", seconds=data.manifest["seconds"])))
    if data.benchmarks:
        b.append(
            Block("p", say(lang, UI, "notes_bench", files=", ".join(v["file"] for v in data.benchmarks.values())))
        )
    b += [Block("p", u["notes_cmd"]), Block("code", command)]
    return b


def make_figures(data: ReportData) -> dict[str, bytes | None]:
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


def build_report(
    results: str | Path = "arena-results",
    out: str | Path | None = None,
    budget: str | None = None,
    bench_dir: str | Path | None = "benchmarks/results",
) -> dict[str, Path]:
    """Write the article; returns {"en.md", "en.html", "zh.md", "zh.html", "data"} → path."""
    data = load(results, budget, bench_dir if bench_dir and Path(bench_dir).is_dir() else None)
    out_dir = Path(out) if out else data.folder.parent / "report"
    verdicts = C.check_all(data) + [C.Verdict(cid, v, cid, {}, cite) for cid, v, cite in C.BIBLIO]
    figures = make_figures(data)
    members = ",".join(sorted({r.member for r in data.rows if r.impl == "lorafam"}))
    command = (
        f"lorafam arena --budget {data.budget}"
        + (f" --members {members}" if data.budget != "quick" and members else "")
        + f" --results {data.folder.parent}\nlorafam report --results {data.folder.parent}"
    )
    paths: dict[str, Path] = {}
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        if png:
            tmp = fig_dir / f".{name.replace(':', '-')}.png.tmp"
            tmp.write_bytes(png)
            os.replace(tmp, fig_dir / f"{name.replace(':', '-')}.png")
    for lang in LANGS:
        blocks = build_blocks(lang, data, verdicts, figures, command)
        md, page = to_markdown(blocks), to_html(blocks, UI[lang]["title"], lang)
        paths[f"{lang}.md"] = out_dir / f"lorafam-report.{lang}.md"
        paths[f"{lang}.html"] = out_dir / f"lorafam-report.{lang}.html"
        atomic_write_text(paths[f"{lang}.md"], md)
        atomic_write_text(paths[f"{lang}.html"], page)
    keys, rows, raw = league(data)
    paths["data"] = out_dir / "report-data.json"
    atomic_write_json(
        paths["data"],
        {
            "budget": data.budget,
            "tasks": data.tasks,
            "seeds": data.seeds,
            "league": {"keys": keys, "rows": rows, "raw": raw},
            "claims": [v.__dict__ for v in verdicts],
            "failed": [r.run_info.run_id for r in data.failed],
            "kept_apart": [n for n, _ in data.kept_apart],
            "problems": data.problems,
        },
    )
    return paths


def main_json(paths: dict[str, Path]) -> str:
    return json.dumps({k: str(v) for k, v in paths.items()}, indent=1)
