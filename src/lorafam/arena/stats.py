"""Statistics that decide: paired bootstrap intervals over test items (and seeds), and the verdict rule.

Every difference the report states is **paired**: both sides were scored on the same test items (the test split
depends on the data seed only), and, where there are several seeds, on the same seeds (same data order). The
interval of a difference of means is a percentile bootstrap:

- one seed: resample the items with replacement, recompute mean(a − b); repeat ``B`` times; the 2.5 % and
  97.5 % quantiles are the 95 % interval;
- several seeds: resample the seeds, and within each drawn seed the items (a two-level bootstrap), so the
  interval carries both the item sampling and the seed-to-seed spread.

The generator is seeded, so the same result files give the same intervals (the report is byte-identical).

A claim "x > t" is **supported** when the whole interval lies above ``t``, **contradicted** when it lies below,
and otherwise undecided: the report then prints the interval and how many items would make it decide
(:func:`items_needed`, from the interval's width, which shrinks as 1/√n).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

B_DEFAULT = 2000
SEED = 20240229

SUPPORTED, CONTRADICTED, UNDECIDED = "supported", "contradicted", "undecided"


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % bootstrap interval (``n_items`` items × ``n_seeds`` seeds behind it)."""

    estimate: float
    low: float
    high: float
    n_items: int
    n_seeds: int = 1

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes(self, threshold: float) -> bool:
        return self.low > threshold or self.high < threshold

    def scaled(self, k: float) -> Interval:
        lo, hi = sorted((self.low * k, self.high * k))
        return Interval(self.estimate * k, lo, hi, self.n_items, self.n_seeds)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "n_items": self.n_items,
            "n_seeds": self.n_seeds,
        }


def _as_matrix(values: Sequence[Sequence[float]] | Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"expected seeds × items values, got shape {a.shape}")
    return a


def _resample_means(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the grand mean of a seeds × items matrix (two-level when there are several seeds)."""
    seeds, items = d.shape
    out = np.empty(n_boot)
    chunk = max(1, 200_000 // max(items * seeds, 1))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        s_idx = rng.integers(0, seeds, size=(k, seeds)) if seeds > 1 else np.zeros((k, 1), dtype=int)
        i_idx = rng.integers(0, items, size=(k, seeds, items))
        picked = d[s_idx[..., None], i_idx]  # (k, seeds, items)
        out[start : start + k] = picked.mean(axis=(1, 2))
    return out


def mean_interval(
    values: Sequence[Sequence[float]] | Sequence[float], n_boot: int = B_DEFAULT, seed: int = SEED
) -> Interval:
    """Mean of per-item values (items, or seeds × items) with its 95 % bootstrap interval."""
    d = _as_matrix(values)
    reps = _resample_means(d, n_boot, np.random.default_rng(seed))
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return Interval(float(d.mean()), float(lo), float(hi), d.shape[1], d.shape[0])


def paired_difference(
    a: Sequence[Sequence[float]] | Sequence[float],
    b: Sequence[Sequence[float]] | Sequence[float],
    n_boot: int = B_DEFAULT,
    seed: int = SEED,
) -> Interval:
    """mean(a − b) over the same items (and seeds) with its 95 % paired bootstrap interval.

    ``a`` and ``b`` are per-item values (or seeds × items, rows = the same seeds in the same order).

    Raises:
        ValueError: the two sides do not have the same shape (not paired).
    """
    da, db = _as_matrix(a), _as_matrix(b)
    if da.shape != db.shape:
        raise ValueError(
            f"paired difference needs the same items and seeds on both sides: {da.shape} vs {db.shape}"
        )
    return mean_interval(da - db, n_boot, seed)


def bootstrap_statistic(
    n_items: int,
    statistic: Callable[[np.ndarray], float | None],
    n_boot: int = B_DEFAULT,
    seed: int = SEED,
) -> tuple[float | None, float | None, float | None, int]:
    """(estimate, low, high, replicates that gave a value) of ``statistic(item_indices)`` under item resampling.

    For statistics that are not means (a ratio of steps, a crossing point): ``statistic`` receives the resampled
    item (or example-slot) indices and returns a number, or None when it is undefined on that replicate (e.g. a
    curve never reaches the target). The interval uses the replicates that gave a value; the caller reports how
    many did not.
    """
    rng = np.random.default_rng(seed)
    est = statistic(np.arange(n_items))
    reps = []
    for _ in range(n_boot):
        v = statistic(rng.integers(0, n_items, size=n_items))
        if v is not None and math.isfinite(v):
            reps.append(v)
    if not reps:
        return est, None, None, 0
    lo, hi = np.quantile(np.asarray(reps), [0.025, 0.975])
    return est, float(lo), float(hi), len(reps)


def decide(interval: Interval | None, threshold: float, direction: str = ">") -> str:
    """The verdict on the claim "difference ``direction`` threshold" from a 95 % interval.

    ``direction`` ">" (the claim says larger than ``threshold``) or "<" (smaller than). Supported when the whole
    interval is on the claim's side, contradicted when it is wholly on the other side, undecided otherwise.
    """
    if interval is None:
        return UNDECIDED
    if direction not in (">", "<"):
        raise ValueError(f"direction must be '>' or '<', got {direction!r}")
    above, below = interval.low > threshold, interval.high < threshold
    if direction == ">":
        return SUPPORTED if above else CONTRADICTED if below else UNDECIDED
    return SUPPORTED if below else CONTRADICTED if above else UNDECIDED


def items_needed(interval: Interval, threshold: float) -> int | None:
    """Items (at the same seeds) that would make an interval of this spread exclude ``threshold``, if the estimate
    stayed where it is: the half-width shrinks as 1/√n. None when the estimate sits on the threshold."""
    gap = abs(interval.estimate - threshold)
    if gap <= 1e-12 or interval.half_width <= 0:
        return None if gap <= 1e-12 else interval.n_items
    factor = (interval.half_width / gap) ** 2
    return max(interval.n_items, math.ceil(interval.n_items * factor * 1.1))


def ema(values: Sequence[float], beta: float = 0.8) -> list[float]:
    """Exponential moving average (the smoothed training loss)."""
    out, m = [], None
    for v in values:
        m = v if m is None else beta * m + (1 - beta) * v
        out.append(m)
    return out


def first_reach(curve: Sequence[float], target: float) -> float | None:
    """First step (1-based, linearly interpolated between steps) where ``curve`` is at or below ``target``."""
    prev = None
    for i, v in enumerate(curve, 1):
        if v <= target:
            if prev is None or prev == v:
                return float(i)
            return (i - 1) + (prev - target) / (prev - v)
        prev = v
    return None


def steps_ratio_interval(
    reference: Sequence[Sequence[float]],
    candidate: Sequence[Sequence[float]],
    n_boot: int = B_DEFAULT,
    seed: int = SEED,
    beta: float = 0.8,
) -> dict[str, float | int | None]:
    """ "Trains k× faster": reference steps / candidate steps to reach the reference's final smoothed loss.

    ``reference`` and ``candidate`` are per-step lists of per-example training losses from runs with the same
    data order (step t saw the same examples in both), so the curves are paired. The bootstrap resamples, at every
    step, the examples of that step's batch (the same draw on both sides), rebuilds both smoothed curves and the
    target, and recomputes the ratio. A replicate in which the candidate never reaches the target counts as ratio 0
    (it was slower than the reference over the whole run) and is also counted in ``unreached``.
    """
    ref, cand = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    if ref.shape != cand.shape or ref.ndim != 2 or ref.size == 0:
        raise ValueError(f"paired loss curves need the same steps × batch shape: {ref.shape} vs {cand.shape}")
    steps, batch = ref.shape
    rows = np.arange(steps)[:, None]

    def ratio(pick: np.ndarray | None) -> float | None:
        r_means = (ref if pick is None else ref[rows, pick]).mean(axis=1)
        c_means = (cand if pick is None else cand[rows, pick]).mean(axis=1)
        r, c = ema(r_means, beta), ema(c_means, beta)
        ref_steps = first_reach(r, r[-1]) or float(steps)
        reach = first_reach(c, r[-1])
        return None if reach is None else float(ref_steps / reach)

    rng = np.random.default_rng(seed)
    est = ratio(None)
    reps, unreached = [], 0
    for _ in range(n_boot):
        v = ratio(rng.integers(0, batch, size=(steps, batch)))
        if v is None:
            unreached += 1
            v = 0.0
        reps.append(v)
    lo, hi = np.quantile(np.asarray(reps), [0.025, 0.975])
    return {
        "estimate": est,
        "low": float(lo),
        "high": float(hi),
        "replicates": n_boot,
        "unreached": unreached,
        "steps": steps,
        "batch": batch,
        "_reps": reps,
    }


def pooled_steps_ratio(
    pairs: Sequence[tuple[Sequence[Sequence[float]], Sequence[Sequence[float]]]],
    n_boot: int = B_DEFAULT,
    seed: int = SEED,
    beta: float = 0.8,
) -> dict[str, float | int | None]:
    """:func:`steps_ratio_interval` over several seeds: each replicate averages the per-seed ratios (every seed
    resampled on its own), so the interval carries the seed-to-seed spread too."""
    if not pairs:
        raise ValueError("no paired loss curves")
    per = [steps_ratio_interval(r, c, n_boot, seed + k, beta) for k, (r, c) in enumerate(pairs)]
    if len(per) == 1:
        return {**per[0], "seeds": 1, "per_seed": [per[0]["estimate"]]}
    rng = np.random.default_rng(seed)
    reps = []
    for k in range(n_boot):
        draws = rng.integers(0, len(pairs), size=len(pairs))
        vals = []
        for d in draws:
            sub = per[d]
            # a replicate of that seed's ratio: approximate by drawing within its interval's replicates
            vals.append(sub["_reps"][k % len(sub["_reps"])])
        reps.append(float(np.mean(vals)))
    ests = [p["estimate"] for p in per]
    lo, hi = np.quantile(np.asarray(reps), [0.025, 0.975])
    return {
        "estimate": float(np.mean([e if e is not None else 0.0 for e in ests])),
        "low": float(lo),
        "high": float(hi),
        "replicates": n_boot,
        "unreached": int(sum(p["unreached"] for p in per)),
        "steps": per[0]["steps"],
        "batch": per[0]["batch"],
        "seeds": len(pairs),
        "per_seed": ests,
    }


def spread_ratio_interval(
    a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], n_boot: int = B_DEFAULT, seed: int = SEED
) -> Interval | None:
    """Seed-to-seed standard deviation of the mean of ``a`` over that of ``b`` (seeds × items, the same seeds and
    items), with a bootstrap interval resampling seeds and items together. None with fewer than 3 seeds. With
    few seeds the interval is wide (and a bootstrap over 3 seeds understates it): read it as a lower bound on the
    uncertainty."""
    da, db = _as_matrix(a), _as_matrix(b)
    if da.shape != db.shape or da.shape[0] < 3:
        return None
    seeds, items = da.shape

    def ratio(ma: np.ndarray, mb: np.ndarray) -> float | None:
        sa, sb = float(np.std(ma, ddof=1)), float(np.std(mb, ddof=1))
        return None if sb <= 1e-12 else sa / sb

    est = ratio(da.mean(1), db.mean(1))
    if est is None:
        return None
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        s_idx = rng.integers(0, seeds, size=seeds)
        i_idx = rng.integers(0, items, size=items)
        v = ratio(da[s_idx][:, i_idx].mean(1), db[s_idx][:, i_idx].mean(1))
        if v is not None:
            reps.append(v)
    if not reps:
        return None
    lo, hi = np.quantile(np.asarray(reps), [0.025, 0.975])
    return Interval(est, float(lo), float(hi), items, seeds)


def unpaired_difference(
    a: Sequence[float], b: Sequence[float], n_boot: int = B_DEFAULT, seed: int = SEED
) -> Interval:
    """mean(a) − mean(b) for two different sets of items (each resampled on its own)."""
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if va.size == 0 or vb.size == 0:
        raise ValueError("unpaired difference needs items on both sides")
    rng = np.random.default_rng(seed)
    reps = np.array(
        [
            va[rng.integers(0, va.size, va.size)].mean() - vb[rng.integers(0, vb.size, vb.size)].mean()
            for _ in range(n_boot)
        ]
    )
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return Interval(float(va.mean() - vb.mean()), float(lo), float(hi), int(min(va.size, vb.size)))
