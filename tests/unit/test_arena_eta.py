"""The arena's time estimate (``lorafam arena --dry-run``) from recorded phase timings, on synthetic records."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafam.arena import results as R
from lorafam.arena.eta import estimate_plan, estimate_run, measured_timings, summarize
from lorafam.arena.spec import Experiment


def record(folder: Path, impl: str, member: str, task: str, step_s: float, batch: int = 4, **phase) -> None:
    ph = {"load": 5.0, "build": 2.0, "train": 0.0, "eval": 8.0, "probes": 3.0, "evals": 1, **phase}
    run = R.RunInfo(f"{impl}--{member}--{task}--s0", impl, member, task, 0, "quick", "h", status="ok")
    info = R.TrainInfo(
        settings={"batch_size": batch}, seconds_per_step=step_s, test_items=32, extra={"phase_seconds": ph}
    )
    R.write_result(folder / "quick" / f"{run.run_id}.json", R.RunResult(run, info, R.collect_meta()))


def exp(impl: str, member: str, task: str, **s) -> Experiment:
    settings = {"steps": 60, "batch_size": 8, "eval_items": 64, "eval_every": 20, **s}
    return Experiment(impl, member, task, 0, "standard", settings)


def test_estimate_scales_steps_batch_and_evaluations(tmp_path: Path) -> None:
    record(tmp_path, "lorafam", "lora", "add3", step_s=2.0)
    t = measured_timings(tmp_path)
    # fixed 10 s + 60 steps × 2 s × (8/4) + 3 evaluations × 64 items × (8 s / 32 items)
    assert estimate_run(exp("lorafam", "lora", "add3"), t) == pytest.approx(10 + 240 + 48)
    # the untrained base: fixed cost (LoRA's, the closest record) and one evaluation
    assert estimate_run(exp("base", "base", "add3", steps=0), t) == pytest.approx(10 + 16)


def test_member_cost_carries_across_tasks_through_lora(tmp_path: Path) -> None:
    record(tmp_path, "lorafam", "lora", "add3", step_s=2.0)
    record(tmp_path, "lorafam", "dora", "add3", step_s=3.0)
    record(tmp_path, "lorafam", "lora", "kv", step_s=10.0)
    t = measured_timings(tmp_path)
    kv_dora = estimate_run(exp("lorafam", "dora", "kv", eval_every=0), t)
    # DoRA costs 1.5× LoRA per step on add3, so 15 s/step on kv at batch 4 → 60 × 30 s at batch 8
    assert kv_dora == pytest.approx(10 + 60 * 30 + 64 * 0.25)


def test_unmeasured_runs_are_reported_not_guessed(tmp_path: Path) -> None:
    record(tmp_path, "lorafam", "lora", "add3", step_s=2.0)
    plan = [exp("lorafam", "lora", "add3"), exp("lorafam", "lora", "json"), exp("peft", "dora", "add3")]
    total, unknown = estimate_plan(plan, measured_timings(tmp_path))
    assert unknown == ["lorafam--lora--json--s0", "peft--dora--add3--s0"]
    assert total == pytest.approx(298)
    text = summarize(plan, tmp_path)["text"]
    assert "1 of 3 runs" in text and "lorafam--lora--json--s0" in text
    missing = summarize(plan, tmp_path / "missing")
    assert missing["unknown"] == [e.run_id for e in plan] and missing["text"].startswith("no estimate yet")


@pytest.mark.parametrize("budget", ["quick", "standard"])
def test_a_fresh_machine_estimates_the_default_budgets_from_the_shipped_timings(
    tmp_path: Path, budget: str
) -> None:
    """With nothing measured under the results folder, every run of the default budgets is estimated from
    ``arena/timings.json`` (shipped with the package), and the text names where the timings came from."""
    from lorafam.arena.eta import shipped_timings
    from lorafam.arena.spec import load_spec, plan

    exps = plan(load_spec(), budget)
    shipped, machine = shipped_timings()
    assert shipped and machine
    out = summarize(exps, tmp_path / "fresh")
    assert out["unknown"] == [], out["text"]
    assert out["seconds"] > 0 and "shipped with lorafam" in out["text"] and machine in out["text"]


def test_parallel_workers_divide_the_wall_time_longest_run_first() -> None:
    from lorafam.arena.eta import makespan

    assert makespan([10.0, 10.0, 10.0, 10.0], 2) == pytest.approx(20.0)
    assert makespan([30.0, 10.0, 10.0, 10.0], 2) == pytest.approx(
        30.0
    )  # the long run on one, the rest on the other
    assert makespan([5.0, 4.0, 3.0], 1) == pytest.approx(12.0) and makespan([], 3) == 0.0
