"""Run an arena: the experiments on worker processes (:mod:`lorafam.arena.pool`), resumable, with one progress bar.

- A finished run (status "ok", same settings hash, same lorafam version and machine) is skipped on re-run.
- A run that raises is recorded as "failed" with its error; one that kills the worker (OOM kill, segfault,
  ``--timeout``) is recorded as "failed" with its log tail, and a new worker takes the next run. The arena goes on.
- A result from another lorafam version or machine is moved to ``_kept-apart/`` and the run is redone; the
  report lists what was kept apart.
- Peak RSS is the kernel's high-water mark of the worker, reset at the start of each run, so it is that run's own
  peak; CPU seconds are the worker's own, per run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lorafam.arena.pool import Board, result_path, run_pool, worker_count
from lorafam.arena.results import atomic_write_json, collect_meta, read_result, write_result
from lorafam.arena.spec import Experiment, run_hash

KEPT_APART = "_kept-apart"


@dataclass
class ArenaOutcome:
    folder: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    kept_apart: list[str] = field(default_factory=list)
    seconds: float = 0.0


def is_done(path: Path, exp: Experiment, env_key: str) -> tuple[bool, bool]:
    """(done, other_env): done = an ok result with the same settings from this environment."""
    if not path.is_file():
        return False, False
    try:
        r = read_result(path)
    except ValueError:
        return False, False
    if r.meta_info.env_key != env_key:
        return False, True
    # the identity is recomputed from the settings the run stored, so records from an earlier hashing rule still match
    same = run_hash(r.run_info.impl, r.run_info.member, r.run_info.task, r.train_info.settings) == exp.spec_hash
    return r.run_info.status in ("ok", "skipped") and same, False


def reusable(root: Path, budget: str, exp: Experiment, env_key: str) -> Path | None:
    """An ok result of the same run (same settings hash, lorafam version and machine) in another budget's folder
    under ``root``: the standard budget reuses the runs ``make main`` (quick) already did with the same settings."""
    for other in sorted(p for p in root.iterdir() if p.is_dir() and p.name != budget):
        cand = other / f"{exp.run_id}.json"
        if cand.is_file() and is_done(cand, exp, env_key) == (True, False):
            return cand
    return None


def run_arena(
    experiments: list[Experiment],
    results_dir: str | Path,
    device: str = "cpu",
    show_progress: bool = True,
    timeout_s: float | None = None,
    log: Callable[[str], None] | None = None,
) -> ArenaOutcome:
    """Run (or resume) the experiments; results land in ``results_dir/<budget>/<run_id>.json``.

    Runs go to ``workers`` worker processes at once (the ``workers`` setting; ``auto``: one per ``threads`` CPU
    cores, at most 4, one on a GPU), longest expected first, so that the last one to start is a short one.
    """
    from rich.console import Console

    console = Console(stderr=True)
    say = log or (lambda msg: console.print(msg, highlight=False))
    if not experiments:
        raise ValueError("nothing to run: the plan is empty")
    experiments = resolve_auto(experiments, device)
    root = Path(results_dir)
    budget = experiments[0].budget
    folder = root / budget
    folder.mkdir(parents=True, exist_ok=True)
    env_key = collect_meta(device).env_key
    outcome = ArenaOutcome(folder)
    start = time.perf_counter()
    n_workers = worker_count(experiments[0].settings, device)
    manifest = {
        "budget": budget,
        "device": device,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "runs": [e.run_id for e in experiments],
        "workers": n_workers,
        "threads": int(experiments[0].settings.get("threads", 1)),
        "load_start": [round(x, 2) for x in os.getloadavg()],  # a shared machine slows every figure: say so
    }
    atomic_write_json(folder / "arena.json", manifest)
    atomic_write_json(root / "latest.json", {"budget": budget, "folder": budget})
    todo = []
    for exp in experiments:
        needed, why = _settled(exp, root, folder, env_key, outcome)
        if needed:
            todo.append(exp)
        elif why:
            say(f"{exp.run_id}: {why}")
    lock, cpu_s = threading.Lock(), [0.0]

    def record(run_id: str, status: str, spent: float) -> None:
        with lock:
            (outcome.failed if status == "failed" else outcome.ran).append(run_id)
            cpu_s[0] += spent
        say(f"[{board.finish(run_id)}/{board.total}] {run_id}: {status}")

    with Board(console, len(experiments), len(experiments) - len(todo), show_progress) as board:
        run_pool(todo, folder, device, timeout_s, n_workers, board, record)
    outcome.seconds = time.perf_counter() - start
    manifest["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["seconds"] = round(outcome.seconds, 1)
    manifest["load_end"] = [round(x, 2) for x in os.getloadavg()]
    manifest["cpu_s"] = round(cpu_s[0], 1)  # the runs done by this arena (each run's own CPU seconds)
    atomic_write_json(folder / "arena.json", manifest)
    return outcome


def _settled(exp: Experiment, root: Path, folder: Path, env_key: str, outcome: ArenaOutcome) -> tuple[bool, str]:
    """(whether the run has to be done, what happened otherwise): a run done here is skipped, one done under
    another budget with the same settings is reused; a result from another version or machine is moved aside."""
    path = result_path(folder, exp)
    done, other_env = is_done(path, exp, env_key)
    if done:
        outcome.skipped.append(exp.run_id)
        return False, ""
    if other_env:
        dest = folder / KEPT_APART / f"{exp.run_id}.{int(time.time())}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), dest)
        outcome.kept_apart.append(exp.run_id)
    source = reusable(root, folder.name, exp, env_key)
    if source is None:
        return True, ""
    result = read_result(source)  # the same run (same settings, version, machine) done under another budget
    result.run_info.budget = folder.name
    result.train_info.extra["reused_from"] = f"{source.parent.name}/{source.name}"
    write_result(path, result)
    outcome.skipped.append(exp.run_id)
    return False, f"reused from {source.parent.name}/"


def bf16_pays_off(device: str = "cpu", threads: int = 2) -> tuple[bool, dict[str, float]]:
    """Whether bf16 autocast speeds up training here: time one (512×576)·(576×1536) matmul in fp32 and bf16.

    CPUs without native bf16 matrix units run bf16 GEMMs several times *slower* than fp32 (measured 7.7× slower
    on an AMD EPYC host), so the arena's ``bf16: auto`` uses bf16 only where it is faster (≥ 1.2×).
    """
    import time

    import torch

    torch.set_num_threads(threads)
    dev = torch.device(device)
    a, w = torch.randn(512, 576, device=dev), torch.randn(1536, 576, device=dev)
    timings = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x, y = a.to(dtype), w.to(dtype)
        x @ y.T
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            x @ y.T
        if dev.type == "cuda":
            torch.cuda.synchronize()
        timings[f"{name}_matmul_s"] = (time.perf_counter() - start) / 5
    return timings["fp32_matmul_s"] / timings["bf16_matmul_s"] >= 1.2, timings


def resolve_auto(experiments: list[Experiment], device: str) -> list[Experiment]:
    """Replace ``bf16: auto`` by the measured decision (recorded in the settings, so it is part of the hash)."""
    if not any(e.settings.get("bf16") == "auto" for e in experiments):
        return experiments
    threads = int(experiments[0].settings.get("threads", 2))
    use, timings = bf16_pays_off(device, threads)
    probe = {"bf16": use, "bf16_probe": {k: round(v, 5) for k, v in timings.items()}}
    return [
        dataclasses.replace(e, settings={**e.settings, **probe}) if e.settings.get("bf16") == "auto" else e
        for e in experiments
    ]
