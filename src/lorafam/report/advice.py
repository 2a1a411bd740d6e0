"""Rules and thresholds of the report's advice ("when to pick it"), apart from their wording.

Each rule compares one member with LoRA on the arena's records and returns :class:`Advice` items: a template key
(worded in :mod:`lorafam.report.words`), whether it speaks for or against the member, and the numbers. The lab
report and the article word the same items, so the two editions cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorafam.report import claims as C
from lorafam.report.data import ReportData, Row, noise_floor

# Thresholds (each one is stated in docs/report.md).
PARAMS_RATIO = 0.5  # fewer than half of LoRA's trainable parameters is worth saying
KL_RATIO, KL_MIN_GAP = 0.7, 0.01  # forgetting below 0.7x LoRA's KL (and at least 0.01 nats lower)
SLOW_MULTI_RUN, SLOW_ONE_RUN = 1.3, 1.5  # step time vs LoRA: two or more runs each / one run each (10-20% noise)
FIRST_LOSS_FACTOR, FIRST_LOSS_MARGIN = 2.0, 0.5  # step-1 loss above 2x LoRA's + 0.5: a different forward


@dataclass(frozen=True)
class Advice:
    """One reason to pick a member (``pro``) or not, as a template key and its numbers."""

    key: str
    pro: bool
    args: dict[str, Any] = field(default_factory=dict)


def floor_points(data: ReportData) -> float:
    """The noise floor of LoRA's accuracy on the primary task, in points (0 when LoRA has no run)."""
    lora = data.row("lorafam", "lora")
    task = C.primary_task(data)
    if lora and lora.accuracies(task):
        n = max(r.train_info.test_items for r in lora.ok_runs(task))
        return 100 * noise_floor(lora.accuracies(task), n)
    return 0.0


def first_loss(row: Row, task: str) -> float | None:
    """Mean training loss at step 1 (before any update) over the row's runs on ``task``."""
    vals = [r.train_info.loss_curve[0][1] for r in row.ok_runs(task) if r.train_info.loss_curve]
    return sum(vals) / len(vals) if vals else None


def slow_threshold(row: Row, lora: Row) -> float:
    """Step-time ratio above which a member is called slower than LoRA (one run each cannot resolve 1.3x)."""
    return SLOW_MULTI_RUN if min(len(row.ok_runs()), len(lora.ok_runs())) >= 2 else SLOW_ONE_RUN


def advise(data: ReportData, member: str) -> list[Advice]:
    """Every for/against item for ``member`` versus LoRA; empty for LoRA itself or without a LoRA run."""
    row, lora = data.row("lorafam", member), data.row("lorafam", "lora")
    if member == "lora" or row is None or lora is None or not row.ok_runs():
        return []
    task = C.primary_task(data)
    out: list[Advice] = []
    ratio = (row.mean("trainable_params") or 0) / max(lora.mean("trainable_params") or 1, 1)
    if ratio < PARAMS_RATIO:
        out.append(Advice("pick_params", True, {"ratio": ratio}))
    g = gap(row, lora, task)
    if g is not None:
        diff, lo, hi, kind = g
        args = {"diff": diff, "lo": lo, "hi": hi, "floor": (hi - lo) / 2, "task": task}
        suffix = "_ci" if kind == "ci" else ""
        if lo > 0:
            out.append(Advice("pick_acc" + suffix, True, args))
        elif hi < 0:
            out.append(Advice("pick_worse" + suffix, False, args))
    out += _forgetting(data, row, lora, task)
    s, ls = row.mean("seconds_per_step"), lora.mean("seconds_per_step")
    if s and ls and s / ls > slow_threshold(row, lora):
        out.append(Advice("pick_slow", False, {"ratio": s / ls}))
    out += _first_step(row, lora, task)
    if row.mean("merge_seconds") is None and any(r.train_info.mergeable is False for r in row.ok_runs()):
        out.append(Advice("pick_nomerge", False))
    return out


def _forgetting(data: ReportData, row: Row, lora: Row, task: str) -> list[Advice]:
    """Low forgetting is a merit only when the member also learned (beat the untrained base beyond the floor)."""
    kl, lkl = row.mean("forgetting_kl"), lora.mean("forgetting_kl")
    if kl is None or lkl is None or not (kl < KL_RATIO * lkl and lkl - kl > KL_MIN_GAP):
        return []
    if C.learned(row, data, task):
        return [Advice("pick_forget", True, {"kl": kl, "lkl": lkl})]
    gain, floor = C.compare(row, data.row("base", "base"), task) or (0.0, 0.0)
    return [Advice("pick_unmoved", False, {"kl": kl, "gain": 100 * gain, "floor": 100 * floor, "task": task})]


def _first_step(row: Row, lora: Row, task: str) -> list[Advice]:
    """Step 1's loss is computed before any update: a gap there comes from a different training-time forward."""
    first, lfirst = first_loss(row, task), first_loss(lora, task)
    if first is None or lfirst is None or first <= FIRST_LOSS_FACTOR * lfirst + FIRST_LOSS_MARGIN:
        return []
    cfg = row.ok_runs(task)[0].train_info.adapter_config
    key = "pick_s2_short" if cfg.get("s2attn") else "pick_first_loss"
    args = {"first": first, "lfirst": lfirst, "ratio": cfg.get("group_size_ratio"), "task": task}
    return [Advice(key, False, args)]


def gap(row: Any, ref: Any, task: str, metric: str = "em") -> tuple[float, float, float, str] | None:
    """``row − ref`` on ``task`` as (estimate, low, high, kind), in points for exact match, nats for NLL.

    kind "ci": the arena's 95 % paired bootstrap interval over the same items (and seeds), from the per-item
    records; kind "floor": runs without per-item records get the report's noise floor (± twice the larger of
    the seed spread and one run's binomial standard error), exact match only.
    """
    from lorafam.report import data as D

    paired = getattr(D, "paired", None)
    ci = paired(row, ref, task, metric) if paired is not None and row is not None and ref is not None else None
    scale = 100.0 if metric == "em" else 1.0
    if ci is not None:
        return scale * ci.estimate, scale * ci.low, scale * ci.high, "ci"
    if metric != "em":
        return None
    cmp = C.compare(row, ref, task)
    if cmp is None:
        return None
    diff, half = 100 * cmp[0], 100 * cmp[1]
    return diff, diff - half, diff + half, "floor"
