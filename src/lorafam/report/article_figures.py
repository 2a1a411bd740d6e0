"""Which figure the article shows where, drawn from the same data as its text (the drawing is
:mod:`lorafam.report.figures`). Each function returns the numbered figure blocks for one place in the article.
"""

from __future__ import annotations

from typing import Any

from lorafam.report import claims as C
from lorafam.report import figures as F
from lorafam.report.advice import gap
from lorafam.report.edition import Article
from lorafam.report.render import Block
from lorafam.report.sources import DRAFT_NUMBERS
from lorafam.report.style import figure_lang
from lorafam.report.text import _Safe


def for_member(art: Article, member: str) -> list[Block]:
    """The figure that goes with ``member``'s verdict, if any (QLoRA: 70B memory; LoRA+: curves; …)."""
    d, fw, fl = art.data, art.fw, figure_lang(art.lang)
    a = art.verdicts["qlora_70b"].args if "qlora_70b" in art.verdicts else {}
    if member == "qlora" and isinstance(a.get("bits"), float) and isinstance(a.get("weights_gib"), float):
        gib16 = C.LLAMA2_70B_PARAMS * 16 / 8 / 2**30
        items = [(fw["mem_16"], gib16), (_Safe().format(fw["mem_q"], bits=a["bits"]), a["weights_gib"])]
        return art.figure(
            "qlora-70b", "cap_mem", F.memory_bars(items, DRAFT_NUMBERS["gpu_gb"] / 1.073741824, fw, fl)
        )
    if member == "loraplus":
        return curves(art)
    if member == "quantum":
        items = [(r.member, r.mean("trainable_params")) for r in d.rows if r.impl in ("lorafam", "full")]
        return art.figure("params", "cap_params", F.param_bars(items, fw, fl))
    if member == "alora" and "alora_ttft" in d.benchmarks:
        from lorafam.report.text import series_name

        series = {series_name(fl, k): v for k, v in C._ttft_series(d.benchmarks["alora_ttft"]).items()}
        return art.figure(
            "ttft", "cap_ttft", F.series_lines(series, fw["history"], fw["ttft"], fw["ttft_title"], fl)
        )
    if member == "longlora" and "s2attn" in d.benchmarks:
        series = {
            fw["s2_full"] if k == "full attention" else k: v
            for k, v in C.s2_series(d.benchmarks["s2attn"]).items()
        }
        return art.figure(
            "s2attn", "cap_s2", F.series_lines(series, fw["context"], fw["step_s"], fw["s2_title"], fl)
        )
    return []


CURVE_MEMBERS = ("lora", "loraplus", "dora")


def curves(art: Article) -> list[Block]:
    """Training loss per step, then exact match at each evaluation point of the run (when there are two or more)."""
    d, task = art.data, C.primary_task(art.data)
    runs = {}
    for name in CURVE_MEMBERS:
        row = d.row("lorafam", name)
        if row:
            runs[name] = [r.train_info.loss_curve for r in row.ok_runs(task) if r.train_info.loss_curve]
    b = art.figure("loss-curves", "cap_curve", F.loss_curves(runs, art.fw, figure_lang(art.lang)))
    points, sizes, kinds = {}, [], set()
    for name in CURVE_MEMBERS:
        row = d.row("lorafam", name)
        pts, n, kind = eval_points(row.ok_runs(task)) if row else ([], 0, "")
        if len(pts) >= 2:
            points[name] = pts
            sizes.append(n)
            kinds.add(kind)
    png = F.eval_curves(points, art.fw, figure_lang(art.lang))
    key = "cap_eval" if kinds == {"ci"} else "cap_eval_floor"
    return b + art.figure("eval-curves", key, png, n=art.num("curve_items", min(sizes, default=0)))


def eval_points(runs: list[Any]) -> tuple[list[tuple[float, float, float, float]], int, str]:
    """(step, mean %, low %, high %) per evaluation point over the runs (seeds), the items behind each point, and
    the kind of band ("ci" or "floor").

    With per-item records (``train_info.evals``) every point scores the same items — the prefix all points
    share (the arena scores a fixed prefix along the run and every item at the end) — and the band is the 95 %
    bootstrap interval of the mean over those items (and seeds). Without them: the eval curve's mean ± the
    noise floor.
    """
    from lorafam.arena import stats

    recs = [r.train_info.evals for r in runs]
    if recs and all(len(e) >= 2 for e in recs) and len({len(e) for e in recs}) == 1:
        n = min(len(rec["em"]) for e in recs for rec in e)
        if n > 0:
            out = []
            for j in range(len(recs[0])):
                ci = stats.mean_interval([e[j]["em"][:n] for e in recs])
                out.append((recs[0][j]["step"], 100 * ci.estimate, 100 * ci.low, 100 * ci.high))
            return out, n, "ci"
    n = max((r.train_info.test_items for r in runs), default=1)
    return _floor_points([r.train_info.eval_curve for r in runs], n), n, "floor"


def _floor_points(curves: list[list[list[float]]], n: int) -> list[tuple[float, float, float, float]]:
    from lorafam.report.data import noise_floor

    if not curves or any(len(c) < 2 for c in curves):
        return []
    out = []
    for j, (step, _) in enumerate(curves[0]):
        vals = [c[j][1] for c in curves if len(c) > j]
        mean, half = 100 * sum(vals) / len(vals), 100 * noise_floor(vals, n)
        out.append((step, mean, max(0.0, mean - half), min(100.0, mean + half)))
    return out


def gaps(art: Article) -> list[Block]:
    """Each member's accuracy gap to LoRA on the primary task, with its interval as a bar."""
    b: list[Block] = []
    d, task = art.data, C.primary_task(art.data)
    lora = d.row("lorafam", "lora")
    items = []
    for row in d.rows:
        if row.impl in ("lorafam", "full") and row.member != "lora" and lora and row.ok_runs(task):
            g = gap(row, lora, task)
            if g:
                items.append((row.member, *g[:3]))
    fw = art.fw
    b += art.figure("gaps", "cap_diff", F.intervals(items, fw, figure_lang(art.lang), fw["diff_title"]))
    return b
