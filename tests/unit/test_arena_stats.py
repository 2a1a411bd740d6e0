"""The arena's statistics: paired bootstrap intervals cover known differences; verdicts follow the interval."""

from __future__ import annotations

import numpy as np
import pytest

from lorafam.arena import stats


def test_a_constant_paired_difference_has_a_zero_width_interval() -> None:
    b = np.random.default_rng(0).random(300)
    iv = stats.paired_difference(b + 0.1, b)
    assert iv.estimate == pytest.approx(0.1)
    assert iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)


def test_the_interval_of_a_known_difference_covers_it() -> None:
    """Paired binary outcomes with a true difference of +10 points: the 95 % interval covers +0.10 in (close to)
    95 % of repeated experiments, and its width matches the paired normal approximation."""
    rng = np.random.default_rng(1)
    n, reps, covered, widths = 300, 60, 0, []
    for r in range(reps):
        u = rng.random(n)
        b = (u < 0.7).astype(float)  # P(b) = 0.7
        a = (u < 0.8).astype(float)  # P(a) = 0.8, correlated with b: discordant on 10 % of items
        iv = stats.paired_difference(a, b, n_boot=600, seed=r)
        covered += iv.low <= 0.10 <= iv.high
        widths.append(iv.half_width)
    assert covered >= 0.85 * reps, covered
    expected = 1.96 * np.sqrt(0.1 * 0.9 / n)  # sd of a mean of i.i.d. differences in {0, 1}, p = 0.1
    assert np.mean(widths) == pytest.approx(expected, rel=0.2)


def test_seeds_widen_the_interval() -> None:
    """Two-level bootstrap: seed-to-seed shifts add to the item noise."""
    rng = np.random.default_rng(2)
    base = rng.random(200)
    same = np.stack([base + 0.05, base + 0.05, base + 0.05])
    spread = np.stack([base + 0.0, base + 0.05, base + 0.10])
    ref = np.stack([base, base, base])
    tight = stats.paired_difference(same, ref)
    wide = stats.paired_difference(spread, ref)
    assert tight.estimate == pytest.approx(wide.estimate)
    assert wide.half_width > tight.half_width + 0.01
    assert wide.n_seeds == 3 and wide.n_items == 200


def test_unpaired_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="same items"):
        stats.paired_difference([1, 0, 1], [1, 0])


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.01, 0.09, stats.SUPPORTED),  # wholly above the threshold
        (-0.01, 0.07, stats.UNDECIDED),  # crosses it
        (-0.09, -0.01, stats.CONTRADICTED),  # wholly below
    ],
)
def test_a_verdict_flips_when_its_interval_crosses_the_threshold(low: float, high: float, expected: str) -> None:
    iv = stats.Interval((low + high) / 2, low, high, 100)
    assert stats.decide(iv, 0.0, ">") == expected
    flipped = {stats.SUPPORTED: stats.CONTRADICTED, stats.CONTRADICTED: stats.SUPPORTED}.get(expected, expected)
    assert stats.decide(iv, 0.0, "<") == flipped


def test_items_needed_grows_as_the_gap_shrinks() -> None:
    iv = stats.Interval(0.02, -0.02, 0.06, 256)
    need = stats.items_needed(iv, 0.0)
    assert need is not None and need > 256
    # with that many items the half-width (∝ 1/√n) would be below the gap
    assert iv.half_width * (256 / need) ** 0.5 < 0.02


def test_steps_ratio_of_a_curve_twice_as_fast_is_two() -> None:
    """Candidate = the reference's loss curve run at double speed (same per-example noise): ratio ≈ 2 and the
    interval covers 2; the same curve against itself gives 1."""
    rng = np.random.default_rng(3)
    steps, batch = 120, 8  # long enough that the smoothing lag (~4 steps) is small next to the crossing step
    t = np.arange(1, steps + 1)[:, None]
    noise = rng.normal(0, 0.05, size=(steps, batch))
    ref = np.exp(-t / 30) + 0.1 + noise
    cand = np.exp(-2 * t / 30) + 0.1 + noise
    # light smoothing: an exponential average lags by about beta / (1 - beta) steps, which biases the ratio down
    out = stats.steps_ratio_interval(ref.tolist(), cand.tolist(), n_boot=400, beta=0.5)
    assert 1.6 < out["estimate"] < 2.6
    assert out["low"] <= 2.0 <= out["high"]
    same = stats.steps_ratio_interval(ref.tolist(), ref.tolist(), n_boot=200)
    assert same["estimate"] == pytest.approx(1.0)
    slower = stats.steps_ratio_interval(cand.tolist()[::-1][::-1], (np.exp(-t / 60) + 0.1 + noise).tolist())
    assert slower["high"] < 1.0  # a candidate slower than the reference: ratio below 1 (unreached counts as 0)
