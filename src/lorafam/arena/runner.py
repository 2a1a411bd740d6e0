"""Run an arena: the experiments one at a time in one worker process, resumable, with one progress bar.

- A finished run (status "ok", same settings hash, same lorafam version and machine) is skipped on re-run.
- A run that raises is recorded as "failed" with its error; one that kills the worker (OOM kill, segfault,
  ``--timeout``) is recorded as "failed" with its log tail, and a new worker takes the next run. The arena goes on.
- A result from another lorafam version or machine is moved to ``_kept-apart/`` and the run is redone; the
  report lists what was kept apart.
- Peak RSS is the kernel's high-water mark of the worker, reset at the start of each run, so it is that run's own
  peak; CPU seconds are the worker's own, per run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lorafam.arena.results import (
    RunResult,
    TrainInfo,
    atomic_write_json,
    collect_meta,
    read_result,
    write_result,
)
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


def result_path(folder: Path, exp: Experiment) -> Path:
    return folder / f"{exp.run_id}.json"


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
    with _Board(console, len(experiments), len(experiments) - len(todo), show_progress) as board:
        cpu_s = _run_pool(todo, folder, device, timeout_s, n_workers, board, outcome, say)
    outcome.seconds = time.perf_counter() - start
    manifest["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["seconds"] = round(outcome.seconds, 1)
    manifest["load_end"] = [round(x, 2) for x in os.getloadavg()]
    manifest["cpu_s"] = round(cpu_s, 1)  # the runs done by this arena (each run's own CPU seconds)
    atomic_write_json(folder / "arena.json", manifest)
    return outcome


def worker_count(settings: dict[str, Any], device: str = "cpu") -> int:
    """How many runs go at once: the ``workers`` setting, or for ``auto`` one per ``threads`` cores (at most 4)
    on a CPU and one on a GPU. On a 2-core CPU two 1-thread runs do about 1.7× the work of one 2-thread run: this
    model's matrices are too small for two threads to split one product well."""
    n = settings.get("workers", "auto")
    if n in (None, "auto"):
        if device != "cpu":
            return 1
        threads = max(int(settings.get("threads", 1)), 1)
        return max(1, min(4, (os.cpu_count() or 1) // threads))
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"arena setting workers: expected a positive integer or 'auto', got {n!r}")
    return n


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


class _Board:
    """The arena-wide progress bar: finished runs plus the fractions of the runs in flight (thread-safe)."""

    def __init__(self, console: Any, total: int, finished: int, show: bool) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        self.bar = Progress(*columns, console=console, disable=not show, transient=False)
        self.task = self.bar.add_task("arena", total=total, completed=finished)
        self.total, self.finished = total, finished
        self.flight: dict[str, float] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> _Board:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def _show(self) -> None:
        names = ", ".join(self.flight) or "arena"
        done = self.finished + sum(min(max(f, 0.0), 0.999) for f in self.flight.values())
        self.bar.update(self.task, completed=done, description=f"{names} ({self.finished}/{self.total} done)")

    def progress(self, run_id: str, fraction: float) -> None:
        with self.lock:
            self.flight[run_id] = fraction
            self._show()

    def finish(self, run_id: str) -> int:
        with self.lock:
            self.flight.pop(run_id, None)
            self.finished += 1
            self._show()
            return self.finished


def _run_pool(
    todo: list[Experiment],
    folder: Path,
    device: str,
    timeout_s: float | None,
    n_workers: int,
    board: _Board,
    outcome: ArenaOutcome,
    say: Callable[[str], None],
) -> float:
    """Run ``todo`` on ``n_workers`` worker processes, longest expected first; returns the runs' CPU seconds."""
    import queue

    from lorafam.arena.eta import expected_order

    jobs: queue.Queue[Experiment] = queue.Queue()
    for exp in expected_order(todo, folder.parent):
        jobs.put(exp)
    lock = threading.Lock()
    cpu = [0.0]

    def drain() -> None:
        threads = int(todo[0].settings.get("threads", 1))
        with contextlib.closing(Worker(threads)) as worker:
            while True:
                try:
                    exp = jobs.get_nowait()
                except queue.Empty:
                    return
                path = result_path(folder, exp)
                board.progress(exp.run_id, 0.0)
                status = run_one(
                    exp, path, device, lambda f, r=exp.run_id: board.progress(r, f), timeout_s, worker
                )
                spent = 0.0
                with contextlib.suppress(ValueError, FileNotFoundError):
                    spent = read_result(path).run_info.cpu_s
                with lock:
                    (outcome.failed if status == "failed" else outcome.ran).append(exp.run_id)
                    cpu[0] += spent if status != "skipped" else 0.0
                k = board.finish(exp.run_id)
                say(f"[{k}/{board.total}] {exp.run_id}: {status}")

    if not todo:
        return 0.0
    pool = [threading.Thread(target=drain, daemon=True) for _ in range(min(n_workers, len(todo)))]
    for t in pool:
        t.start()
    for t in pool:
        while t.is_alive():
            t.join(0.5)  # a short join keeps Ctrl-C responsive in the main thread
    return cpu[0]


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


class Worker:
    """The long-lived run process (``python -m lorafam.arena.worker --serve``), started on first use and again
    after a run that killed it."""

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        t = str(self.threads)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": t,
            "MKL_NUM_THREADS": t,
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONWARNINGS": "ignore",
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [sys.executable, "-m", "lorafam.arena.worker", "--serve"]
        return subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )

    def run(
        self, job: dict[str, Any], advance: Callable[[float], None] | None, timeout_s: float | None
    ) -> str | None:
        """Send one job and follow its progress; its status, or None when the process died (then it is gone)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        timer = threading.Timer(timeout_s, proc.kill) if timeout_s else None
        if timer:
            timer.start()
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            for line in proc.stdout:
                if line.startswith("@@done"):
                    return line.split()[1]
                if line.startswith("@@progress") and advance is not None:
                    with contextlib.suppress(IndexError, ValueError):
                        advance(float(line.split()[1]))
                elif line.strip():
                    with open(job["log"], "a", encoding="utf-8") as log:
                        log.write(line)
        except BrokenPipeError:
            pass
        except BaseException:
            self.close()
            raise
        finally:
            if timer:
                timer.cancel()
        proc.kill()
        proc.wait()
        self.proc = None
        return None

    def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def run_one(
    exp: Experiment,
    path: Path,
    device: str = "cpu",
    advance: Callable[[float], None] | None = None,
    timeout_s: float | None = None,
    worker: Worker | None = None,
) -> str:
    """Run one experiment in the worker process; returns its status. Never raises for a failed run."""
    if exp.settings.get("skip_reason"):
        info = exp.run_info(
            status="skipped",
            error=str(exp.settings["skip_reason"]),
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            device=device,
        )
        write_result(path, RunResult(info, TrainInfo(settings=dict(exp.settings)), collect_meta(device)))
        return "skipped"
    log_path = path.parent / "logs" / f"{exp.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("", encoding="utf-8")
    if path.exists():
        path.unlink()
    own = worker is None
    worker = worker or Worker(int(exp.settings.get("threads", 2)))
    job = {
        "experiment": exp.to_dict(),
        "device": device,
        "command": sys.argv,
        "result": str(path),
        "log": str(log_path),
    }
    started = time.perf_counter()
    try:
        status = worker.run(job, advance, timeout_s)
    finally:
        if own:
            worker.close()
    elapsed = time.perf_counter() - started
    if status is not None:
        with contextlib.suppress(ValueError, FileNotFoundError):
            return read_result(path).run_info.status
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    why = "timed out" if timeout_s and elapsed >= timeout_s else "the process ended"
    result = RunResult(
        exp.run_info(
            status="failed",
            error=f"the run process died ({why}); see {log_path.name}",
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            duration_s=elapsed,
            threads=int(exp.settings.get("threads", 2)),
            device=device,
        ),
        TrainInfo(settings=dict(exp.settings), extra={"log_tail": tail}),
        collect_meta(device),
    )
    write_result(path, result)
    return "failed"
