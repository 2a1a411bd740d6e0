"""Assembly of the lab report: result data + verdicts + advice → a list of :class:`Block` per language.

No judgement is made here (rules: :mod:`lorafam.report.claims`, :mod:`lorafam.report.advice`) and no sentence is
written here (words: :mod:`lorafam.report.words`); this module only puts them in order.
"""

from __future__ import annotations

from typing import Any

from lorafam.report import advice as A
from lorafam.report import claims as C
from lorafam.report.data import ReportData, Row, paired
from lorafam.report.league import acc_cell, headers, league
from lorafam.report.render import Block
from lorafam.report.text import CLAIMS, REASONS, UI, VERDICTS, idea, say, series_name


def chapter(lang: str, data: ReportData, member: Any) -> list[Block]:
    """One member's section: what it changes, what was measured, its PEFT peer, when to pick it."""
    u = UI[lang]
    blocks = [
        Block("h3", f"{member.name} — {member.title} ({member.year})"),
        Block(
            "p",
            say(
                lang,
                UI,
                "chapter_what",
                idea=idea(lang, member),
                origin=member.origin,
                venue=member.venue,
                arxiv=member.arxiv,
            ),
        ),
    ]
    row, lora = data.row("lorafam", member.name), data.row("lorafam", "lora")
    if row is None or not row.ok_runs():
        blocks.append(Block("p", u["chapter_not_run"] if row is None else u["no_results"]))
        return blocks
    blocks.append(Block("p", _measured(lang, data, row, lora)))
    start = row.extra("forgetting_kl_start")
    if isinstance(start, (int, float)) and start > 0.01:
        blocks.append(Block("p", say(lang, UI, "chapter_kl_start", start=start, kl=row.mean("forgetting_kl"))))
    peer = data.row("peft", member.name)
    if peer is not None and peer.ok_runs():
        step, pstep = row.mean("seconds_per_step"), peer.mean("seconds_per_step")
        acc_text = say(lang, UI, "acc_text", tasks=", ".join(f"{t} {acc_cell(peer, t)}%" for t in data.tasks))
        ratio = step / pstep if step and pstep else None
        blocks.append(Block("p", say(lang, UI, "chapter_peft", step=pstep, ratio=ratio, acc_text=acc_text)))
    blocks.append(Block("p", u["pick_intro"] + pick(lang, data, member)))
    return blocks


def _measured(lang: str, data: ReportData, row: Row, lora: Row | None) -> str:
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
    return say(
        lang,
        UI,
        "chapter_nums",
        acc_text=say(lang, UI, "acc_text", tasks=", ".join(f"{t} {acc_cell(row, t)}%" for t in data.tasks)),
        params=int(row.mean("trainable_params")),
        pct=100 * row.mean("trainable_params") / row.mean("total_params"),
        step=step,
        step_ratio=step / lstep if step and lstep else None,
        rss=row.mean_run("peak_rss_mb"),
        kl=row.mean("forgetting_kl"),
        mb=size / 1e6 if size else None,
        merge=merge,
    )


def pick(lang: str, data: ReportData, member: Any) -> str:
    """ "When to pick it": the advice items of :func:`lorafam.report.advice.advise`, worded."""
    if member.name == "lora" or data.row("lorafam", "lora") is None:
        return UI[lang]["pick_reference"]
    items = A.advise(data, member.name)
    pros = [say(lang, UI, a.key, **a.args) for a in items if a.pro]
    cons = [say(lang, UI, a.key, **a.args) for a in items if not a.pro]
    u = UI[lang]
    worse = any(a.key.startswith("pick_worse") for a in items)
    if not pros and worse:  # "nothing separated it from LoRA" would contradict the accuracy item
        text = u["sep"].join(cons)
        return text[:1].upper() + text[1:] + u["end"]
    text = u["sep"].join(pros) if pros else say(lang, UI, "pick_nothing", arxiv=member.arxiv)
    text = text[:1].upper() + text[1:]
    if pros:
        text += u["end"]
    if cons:
        text += u["but"] + u["sep"].join(cons) + u["end"]
    return text


def named(lang: str, args: dict[str, Any]) -> dict[str, Any]:
    """Verdict arguments with benchmark series keys (``*_name``) put into words for ``lang``."""
    return {k: series_name(lang, v) if k.endswith("_name") and isinstance(v, str) else v for k, v in args.items()}


def build_blocks(
    lang: str, data: ReportData, verdicts: list[C.Verdict], figures: dict[str, bytes | None], command: str
) -> list[Block]:
    """The whole lab report for ``lang``, in order."""
    from lorafam.family import family

    b = _opening(lang, data) + _tree(lang, figures)
    b.append(Block("h2", UI[lang]["chapters"]))
    for m in family():
        b += chapter(lang, data, m)
    _, rows, _ = league(data)
    b += [
        Block("h2", UI[lang]["league"]),
        Block("p", say(lang, UI, "league_intro", n=data.settings.get("forget_prompts"))),
        Block("table", headers=headers(lang, data), rows=rows),
    ]
    b += _differences(lang, data)
    b += _plots(lang, data, figures) + _claims(lang, verdicts) + _problems(lang, data)
    return b + notes(lang, data, command)


def _opening(lang: str, data: ReportData) -> list[Block]:
    runs = [r for row in data.rows for r in row.runs]
    ok = sum(r.run_info.status == "ok" for r in runs)
    counts = {"runs": len(runs), "ok": ok, "failed": len(data.failed), "skipped": len(data.skipped)}
    b = [Block("h1", UI[lang]["title"]), Block("p", say(lang, UI, "lede", budget=data.budget, **counts))]
    task = C.primary_task(data)
    gain = paired(data.row("lorafam", "lora"), data.row("base", "base"), task, "em")
    if gain is not None:  # per-item records: every difference has a paired interval
        args = {
            "budget": data.budget,
            "steps": data.settings.get("steps"),
            "batch": data.settings.get("batch_size"),
            "seeds": len(data.seeds),
            "items": gain.n_items,
            "task": task,
            "gain": 100 * gain.estimate,
            "gain_lo": 100 * gain.low,
            "gain_hi": 100 * gain.high,
        }
        b.append(Block("p", say(lang, UI, "lede_iv", **args)))
    elif data.budget == "quick" or len(data.seeds) < 2:
        args = {
            "budget": data.budget,
            "steps": data.settings.get("steps"),
            "seeds": len(data.seeds),
            "items": data.settings.get("eval_items"),
            "floor": A.floor_points(data),
        }
        b.append(Block("p", say(lang, UI, "cannot_rank", **args)))
    return b


def _differences(lang: str, data: ReportData) -> list[Block]:
    """Every row − LoRA on the primary task with its paired 95 % intervals (exact match and answer NLL)."""
    task = C.primary_task(data)
    diffs = [d for d in C.differences(data, task) if d["em"]]
    if not diffs:
        return []
    u = UI[lang]

    def cell(iv: dict[str, Any] | None, k: float, spec: str) -> str:
        if not iv:
            return "—"
        e, lo, hi = (format(k * iv[x], spec) for x in ("estimate", "low", "high"))
        return f"{e} [{lo}, {hi}]"

    rows = [[d["label"], cell(d["em"], 100, "+.1f"), cell(d["nll"], 1, "+.4f"), d["flag"] or "—"] for d in diffs]
    return [
        Block("h2", u["diff_h"]),
        Block("p", say(lang, UI, "diff_intro", task=task, items=diffs[0]["em"]["n_items"])),
        Block("table", headers=[u["col_member"], u["col_em_diff"], u["col_nll_diff"], u["col_flag"]], rows=rows),
    ]


def _tree(lang: str, figures: dict[str, bytes | None]) -> list[Block]:
    from lorafam.family import family

    u = UI[lang]
    headers = [u["col_member"], u["col_year"], u["col_origin"], u["col_venue"], u["col_parent"], u["col_idea"]]
    rows = [[m.name, str(m.year), m.origin, m.venue, m.parent or "—", idea(lang, m)] for m in family()]
    return [
        Block("h2", u["tree"]),
        Block("p", u["tree_intro"]),
        Block("figure", u["fig_tree"], png=figures["tree"], name="tree"),
        Block("table", headers=headers, rows=rows),
    ]


def _plots(lang: str, data: ReportData, figures: dict[str, bytes | None]) -> list[Block]:
    u = UI[lang]
    b = [Block("h2", u["plots"])]
    for key, caption in (("curve", u["fig_curve"]), ("pareto", u["fig_pareto"]), ("memory", u["fig_mem"])):
        for name, png in sorted((k, v) for k, v in figures.items() if k.startswith(key)):
            if not png:
                b.append(Block("p", say(lang, UI, "no_fig", why=u["pareto_none"])))
                continue
            text = f"{caption} — {name.split(':')[-1]}" if ":" in name else caption
            b.append(Block("figure", text, png=png, name=name.replace(":", "-")))
    for key, cap in (("ttft", "fig_ttft"), ("s2attn", "fig_s2")):
        bench = data.benchmarks.get("alora_ttft" if key == "ttft" else "s2attn")
        if figures.get(key):
            b.append(Block("figure", say(lang, UI, cap, file=bench["file"]), png=figures[key], name=key))
        else:
            missing = say(lang, UI, "no_fig", why=u["no_bench_file"])
            b.append(Block("p", say(lang, UI, cap, file="benchmarks/results") + " — " + missing))
    return b


def _claims(lang: str, verdicts: list[C.Verdict]) -> list[Block]:
    u = UI[lang]
    rows = [
        [
            CLAIMS[lang][v.claim],
            VERDICTS[lang][v.verdict],
            say(lang, REASONS, v.reason, **named(lang, v.args)),
            v.cite or "—",
        ]
        for v in verdicts
    ]
    b = [
        Block("h2", u["claims"]),
        Block("table", headers=[u["col_claim"], u["col_verdict"], u["col_evidence"], u["col_source"]], rows=rows),
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
    return b


def _problems(lang: str, data: ReportData) -> list[Block]:
    """Failed, skipped, planned-but-missing runs; probe errors; runs kept apart (never mixed into a table)."""
    u, b = UI[lang], []
    done = {r.run_info.run_id for row in data.rows for r in row.runs}
    missing = [rid for rid in data.manifest.get("runs", []) if rid not in done]
    if data.failed or data.skipped or missing:
        rows = [[r.run_info.run_id, r.run_info.status, r.run_info.error[:200]] for r in data.failed + data.skipped]
        rows += [[rid, u["not_run"], u["not_run_why"]] for rid in missing]
        b += [
            Block("h2", u["failed"]),
            Block("table", headers=[u["col_run"], u["col_status"], u["col_error"]], rows=rows),
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
        items = [
            f"{name}: lorafam {r.meta_info.lorafam_version}, "
            f"{r.meta_info.machine.get('cpu', '?')} ({r.meta_info.machine.get('cores', '?')} cores)"
            for name, r in data.kept_apart
        ]
        b += [Block("h2", u["kept"]), Block("p", u["kept_intro"]), Block("list", items=items)]
    return b


def notes(lang: str, data: ReportData, command: str) -> list[Block]:
    """Method notes: harness, numeric regime, budget, machine, versions, wall time, the command to reproduce."""
    u, m = UI[lang], data.meta
    machine = m.get("machine", {})
    skip = ("user_task", "bf16_probe")
    settings = ", ".join(f"{k}={v}" for k, v in sorted(data.settings.items()) if k not in skip)
    pk = ", ".join(f"{k} {v}" for k, v in sorted(m.get("packages", {}).items()))
    b = [
        Block("h2", u["notes"]),
        Block("p", say(lang, UI, "notes_harness", regime=_regime(lang, data))),
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
        files = ", ".join(v["file"] for v in data.benchmarks.values())
        b.append(Block("p", say(lang, UI, "notes_bench", files=files)))
    return b + [Block("p", u["notes_cmd"]), Block("code", command)]


def _regime(lang: str, data: ReportData) -> str:
    u = UI[lang]
    if data.settings.get("bf16") is True:
        return u["regime_bf16"]
    probe = data.settings.get("bf16_probe") or {}
    ratio = probe.get("bf16_matmul_s", 0) / probe["fp32_matmul_s"] if probe.get("fp32_matmul_s") else None
    why = say(lang, UI, "regime_why", ratio=ratio) if ratio else "bf16: false"
    return say(lang, UI, "regime_fp32", why=why)
