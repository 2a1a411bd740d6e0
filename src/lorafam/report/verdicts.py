"""What every claim rule shares: the verdict record, paired comparisons with their intervals, divergence flags, the
"what would settle it" line. The rules themselves are in :mod:`lorafam.report.claims_cost` (what a member costs)
and :mod:`lorafam.report.claims_quality` (what it learns); :mod:`lorafam.report.claims` runs them all."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lorafam.arena import stats
from lorafam.report.data import ReportData, Row, noise_floor, paired

SUPPORTED, CONTRADICTED, MIXED, NM = "supported", "contradicted", "mixed", "not measurable here"


UNDECIDED = stats.UNDECIDED


STANDARD = "lorafam arena --budget standard"


@dataclass
class Verdict:
    claim: str  # id; its statement lives in text.CLAIMS
    verdict: str
    reason: str  # key into text.REASONS
    args: dict[str, Any] = field(default_factory=dict)
    cite: str = ""


def _members_by_method(method: str) -> list[str]:
    from lorafam.family import MEMBERS

    return [n for n, m in MEMBERS.items() if m.method == method]


def primary_task(data: ReportData) -> str:
    """The task most members ran (the main budget's dates; add3 in older records)."""
    for t in ("dates", "add3"):
        if t in data.tasks:
            return t
    if not data.tasks:
        return ""
    return max(data.tasks, key=lambda t: sum(bool(r.ok_runs(t)) for r in data.rows))


def _acc(row: Row | None, task: str) -> list[float]:
    return row.accuracies(task) if row else []


def compare(a: Row | None, b: Row | None, task: str) -> tuple[float, float] | None:
    """(mean exact match of a − that of b, half-width) on ``task``; None when either is missing.

    With per-item records the half-width is the larger side of the paired 95 % interval (so "diff > half-width"
    means the interval excludes zero); older records fall back to the binomial noise floor."""
    iv = paired(a, b, task, "em")
    if iv is not None:
        return iv.estimate, max(iv.estimate - iv.low, iv.high - iv.estimate)
    va, vb = _acc(a, task), _acc(b, task)
    if not va or not vb:
        return None
    n = max(r.train_info.test_items for r in a.ok_runs(task)) if a else 1
    diff = sum(va) / len(va) - sum(vb) / len(vb)
    return diff, max(noise_floor(va, n), noise_floor(vb, n))


def spikes(curve: list[list[float]], warm: int = 3) -> int:
    """Loss spikes: steps after warm-up whose loss exceeds 1.5× the lowest loss seen so far (and is finite)."""
    count, best = 0, math.inf
    for step, loss in curve:
        if not math.isfinite(loss):
            count += 1
            continue
        if step > warm and loss > 1.5 * best:
            count += 1
        best = min(best, loss)
    return count


def _ema(curve: list[list[float]], beta: float = 0.8) -> list[tuple[float, float]]:
    out, m = [], None
    for step, loss in curve:
        m = loss if m is None else beta * m + (1 - beta) * loss
        out.append((step, m))
    return out


def steps_to_reach(curve: list[list[float]], target: float) -> float | None:
    for step, v in _ema(curve):
        if v <= target:
            return step
    return None


def _iv(iv: stats.Interval | None, k: float = 100.0) -> dict[str, Any]:
    """An interval as verdict arguments (points for exact match: ``k`` = 100)."""
    if iv is None:
        return {"d": None, "lo": None, "hi": None, "n": None}
    return {"d": k * iv.estimate, "lo": k * iv.low, "hi": k * iv.high, "n": iv.n_items, "seeds": iv.n_seeds}


def _pair_args(a: Row | None, b: Row | None, task: str, prefix: str = "") -> dict[str, Any]:
    """Exact-match (points) and answer-NLL (nats/token) paired differences a − b, as verdict arguments."""
    em, nll = paired(a, b, task, "em"), paired(a, b, task, "nll")
    out = {f"{prefix}{k}": v for k, v in _iv(em).items()}
    out.update({f"{prefix}n{k}": v for k, v in _iv(nll, 1.0).items() if k in ("d", "lo", "hi")})
    return out


def settle(iv: stats.Interval | None, threshold: float, data: ReportData) -> str:
    """What would settle an undecided interval: items at this spread (if the estimate held), or more seeds."""
    if iv is None:
        return STANDARD
    need = stats.items_needed(iv, threshold)
    if need is None:
        return "none: the estimate sits on the threshold"
    return f"eval_items ≥ {need} (or more seeds)"


def diverged(row: Row | None, task: str, lora: Row | None = None) -> str:
    """Why a member's setting is flagged as diverging on ``task`` ('' when it is not): a non-finite loss, a
    smoothed training loss that ends above where it started, or (when ``lora`` is given) general behaviour
    broken by training — a forgetting KL that training added (beyond the value right after the adapter was
    attached, which for QLoRA is the 4-bit base's own) above 1 nat/token and more than 5× LoRA's. An arena that
    ranks such a setting compares a broken run, so the report flags it instead."""
    if row is None:
        return ""
    for r in row.ok_runs(task):
        curve = [v for _, v in r.train_info.loss_curve]
        if any(not math.isfinite(v) for v in curve):
            return "non-finite loss"
        if len(curve) >= 4:
            sm = stats.ema(curve)
            if sm[-1] > sm[1]:
                return f"smoothed loss rose from {sm[1]:.3f} to {sm[-1]:.3f}"
    if lora is None or lora is row:
        return ""

    def drift(w: Row) -> float | None:
        kl = w.mean("forgetting_kl", task)
        start = w.extra("forgetting_kl_start")
        return None if kl is None else kl - (start if isinstance(start, (int, float)) else 0.0)

    d, ld = drift(row), drift(lora)
    if d is not None and ld is not None and ld > 0 and d > 1.0 and d > 5 * ld:
        return f"forgetting KL from training {d:.2f} nats/token = {d / ld:.0f}× LoRA's"
    return ""


def differences(data: ReportData, task: str | None = None) -> list[dict[str, Any]]:
    """Every row − LoRA on ``task`` (default: the primary task): paired exact-match and NLL intervals, and a
    divergence flag. The report's table of differences."""
    task = task or primary_task(data)
    lora = data.row("lorafam", "lora")
    out = []
    for row in data.rows:
        if row is lora or not row.ok_runs(task):
            continue
        em, nll = paired(row, lora, task, "em"), paired(row, lora, task, "nll")
        out.append(
            {
                "impl": row.impl,
                "member": row.member,
                "label": row.label,
                "em": em.to_dict() if em else None,
                "nll": nll.to_dict() if nll else None,
                "flag": diverged(row, task, lora),
            }
        )
    return out


def _combine(parts: list[str]) -> str:
    """One verdict from the verdicts of a claim's parts (all must hold)."""
    if parts and all(p == SUPPORTED for p in parts):
        return SUPPORTED
    if CONTRADICTED in parts:
        return MIXED if SUPPORTED in parts else CONTRADICTED
    return UNDECIDED


def learned(row: Row | None, data: ReportData, task: str) -> bool:
    """Whether ``row`` beat the untrained base on ``task``: the paired interval of its gain lies above zero (True
    when there is no base run: then there is nothing to say it did not)."""
    gain = compare(row, data.row("base", "base"), task)
    return gain is None or gain[0] > gain[1]
