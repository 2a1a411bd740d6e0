"""How long a planned arena will take, from the timings of runs already measured on this machine.

Every finished run records where its time went (``train_info.extra["phase_seconds"]``: load, build, train,
eval, probes, and the number of evaluations). A planned run is estimated from the closest measured one:

    seconds ≈ fixed (load + build + forgetting probe) [+ other probes] + steps × s/step + evaluations × items × s/item

with s/step scaled by the batch size, and, when the member was only measured on another task, by the ratio of
LoRA's step times on the two tasks (members keep their cost relative to LoRA across tasks). Runs with no usable
record are counted as unknown, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lorafam.arena.results import RunResult, load_results
from lorafam.arena.spec import Experiment


@dataclass(frozen=True)
class Timing:
    """Per-run costs measured for one (impl, member, task)."""

    fixed_s: float  # process start, load, build
    probes_s: float  # the seed-independent probes (skipped on seeds outside a budget's probe_seeds)
    step_s: float  # seconds per step at ``batch``
    batch: int
    eval_item_s: float  # one teacher-forced (or generated) test item
    forget_s: float = 0.0  # one forgetting probe (run at every evaluation point)

    @classmethod
    def from_result(cls, r: RunResult) -> Timing | None:
        t = r.train_info
        ph = t.extra.get("phase_seconds") if isinstance(t.extra, dict) else None
        if r.run_info.status != "ok" or not ph:
            return None
        evals = max(int(ph.get("evals", 1)), 1)
        items = float(ph.get("eval_items") or evals * max(t.test_items, 1))
        timed = sum(float(v) for k, v in ph.items() if k not in ("evals", "eval_items"))
        untimed = max(float(r.run_info.duration_s) - timed, 0.0)  # process start, imports, writing the result
        return cls(
            fixed_s=untimed + sum(float(ph.get(k, 0)) for k in ("load", "build")),
            probes_s=float(ph.get("probes", 0)),
            step_s=float(t.seconds_per_step or 0.0),
            batch=int(t.settings.get("batch_size", 1) or 1),
            eval_item_s=float(ph.get("eval", 0)) / max(items, 1.0),
            forget_s=float(ph.get("forgetting", 0)) / evals,
        )


SHIPPED = Path(__file__).with_name("timings.json")


def shipped_timings() -> tuple[dict[tuple[str, str, str], Timing], str]:
    """The per-run timings shipped with lorafam (measured on the development machine), and where they came from,
    so a fresh machine's ``--dry-run`` has an estimate before it has timed anything."""
    if not SHIPPED.is_file():
        return {}, ""
    d = json.loads(SHIPPED.read_text(encoding="utf-8"))
    out = {tuple(k.split("|")): Timing(**v) for k, v in d.get("timings", {}).items()}
    return out, str(d.get("machine", ""))  # type: ignore[return-value]


def write_shipped(folder: str | Path, path: str | Path = SHIPPED, machine: str = "") -> int:
    """Store the timings measured under ``folder`` as the shipped fallback (``scripts``/maintainers only)."""
    from lorafam.arena.results import atomic_write_json

    timings = measured_timings(folder)
    atomic_write_json(
        path,
        {"machine": machine, "timings": {"|".join(k): asdict(v) for k, v in sorted(timings.items())}},
    )
    return len(timings)


def measured_timings(folder: str | Path) -> dict[tuple[str, str, str], Timing]:
    """(impl, member, task) → the newest usable timing among the result files under ``folder`` (any budget)."""
    out: dict[tuple[str, str, str], Timing] = {}
    found, _ = load_results(folder)
    for _, r in sorted(found, key=lambda pr: pr[1].run_info.started_at):
        timing = Timing.from_result(r)
        if timing is not None:
            out[(r.run_info.impl, r.run_info.member, r.run_info.task)] = timing
    return out


def _step_for(
    timings: dict[tuple[str, str, str], Timing], impl: str, member: str, task: str
) -> tuple[float, int] | None:
    """(s/step, its batch) for this run, transferring a member's cost across tasks through LoRA's ratio."""
    own = timings.get((impl, member, task))
    if own is not None:
        return own.step_s, own.batch
    lora_here = timings.get(("lorafam", "lora", task))
    for (i, m, t), other in timings.items():
        lora_there = timings.get(("lorafam", "lora", t))
        if i == impl and m == member and lora_here and lora_there and lora_there.step_s > 0:
            per_example = other.step_s / other.batch * (lora_here.step_s / lora_here.batch)
            per_example /= lora_there.step_s / lora_there.batch
            return per_example * lora_here.batch, lora_here.batch
    return None


def estimate_run(exp: Experiment, timings: dict[tuple[str, str, str], Timing]) -> float | None:
    """Estimated wall seconds of one planned run (None when nothing comparable was measured)."""
    s = exp.settings
    if s.get("skip_reason"):
        return 0.0
    task_ref = timings.get(("lorafam", "lora", exp.task)) or timings.get(("base", "base", exp.task))
    own = timings.get((exp.impl, exp.member, exp.task))
    fixed_ref = own or next((t for (i, m, _), t in timings.items() if i == exp.impl and m == exp.member), task_ref)
    if fixed_ref is None or task_ref is None:
        return None
    steps = 0 if exp.impl == "base" else int(s.get("steps", 0))
    train = 0.0
    if steps:
        step = _step_for(timings, exp.impl, exp.member, exp.task)
        if step is None:
            return None
        step_s, batch = step
        train = steps * step_s * int(s.get("batch_size", batch)) / batch
    n_items = int(s.get("eval_items", 0))
    curve = eval_points(s, steps)
    items = n_items + len(curve) * min(int(s.get("curve_items") or n_items), n_items)
    item_s = (own or task_ref).eval_item_s
    probes = fixed_ref.probes_s if s.get("probes", True) is True else 0.0
    forget = (len(curve) + 1) * fixed_ref.forget_s if s.get("probes", True) else 0.0
    return fixed_ref.fixed_s + probes + train + items * item_s + forget


def expected_order(experiments: list[Experiment], folder: str | Path) -> list[Experiment]:
    """The experiments, longest expected first (measured timings under ``folder``, else the shipped ones; runs
    with no estimate go first, in plan order), so that parallel workers finish close together."""
    timings = {**shipped_timings()[0], **(measured_timings(folder) if Path(folder).exists() else {})}
    est = [estimate_run(e, timings) for e in experiments]
    order = sorted(range(len(experiments)), key=lambda i: (est[i] is not None, -(est[i] or 0.0), i))
    return [experiments[i] for i in order]


def eval_points(settings: dict[str, Any], steps: int) -> list[int]:
    """The steps (before the last) at which a run scores its curve items: ``eval_at`` and multiples of
    ``eval_every``."""
    if not steps:
        return []
    every = int(settings.get("eval_every") or 0)
    at = {int(x) for x in settings.get("eval_at") or []} | (set(range(every, steps, every)) if every else set())
    return sorted(x for x in at if 0 < x < steps)


def estimate_plan(
    experiments: list[Experiment], timings: dict[tuple[str, str, str], Timing]
) -> tuple[float, list[str]]:
    """(estimated seconds of the runs that can be estimated, run ids that cannot)."""
    total, unknown = 0.0, []
    for exp in experiments:
        est = estimate_run(exp, timings)
        if est is None:
            unknown.append(exp.run_id)
        else:
            total += est
    return total, unknown


def makespan(durations: list[float], workers: int) -> float:
    """Wall time of runs of these durations on ``workers`` parallel workers, longest first, each run going to the
    worker that frees up first (what :mod:`lorafam.arena.pool` does)."""
    free = [0.0] * max(workers, 1)
    for d in sorted(durations, reverse=True):
        i = free.index(min(free))
        free[i] += d
    return max(free) if durations else 0.0


def describe(total_s: float, unknown: list[str], n_runs: int, workers: int = 1) -> str:
    known = n_runs - len(unknown)
    if not known:
        return "no estimate yet: no comparable run has been timed under this results folder"
    on = f" on {workers} workers" if workers > 1 else ""
    text = f"estimated {total_s / 60:.0f} min{on} for {known} of {n_runs} runs (from timings measured here)"
    if unknown:
        text += f"; no comparable timing yet for {len(unknown)}: {', '.join(unknown[:6])}"
        text += " …" if len(unknown) > 6 else ""
    return text


def summarize(experiments: list[Experiment], folder: str | Path, workers: int = 1) -> dict[str, Any]:
    """The plan's wall-time estimate on ``workers`` parallel workers from the timings measured under ``folder``;
    where nothing comparable was measured there yet (a fresh machine), from the timings shipped with lorafam, and
    the text says so."""

    def known(t: dict[tuple[str, str, str], Timing]) -> int:
        return sum(estimate_run(e, t) is not None for e in experiments)

    measured = measured_timings(folder) if Path(folder).exists() else {}
    timings, source = measured, "(from timings measured here)"
    shipped, machine = shipped_timings()
    if known(measured) < len(experiments) and known({**shipped, **measured}) > known(measured):
        timings, source = (
            {**shipped, **measured},
            f"(from the timings shipped with lorafam, measured on {machine})",
        )
    per_run = {e.run_id: estimate_run(e, timings) for e in experiments}
    unknown = [r for r, v in per_run.items() if v is None]
    wall = makespan([v for v in per_run.values() if v is not None], workers)
    text = describe(wall, unknown, len(experiments), workers).replace("(from timings measured here)", source)
    return {"seconds": wall, "unknown": unknown, "text": text}
