"""The arena's worker processes: each runs experiments one after another (``lorafam.arena.worker --serve``), and
several of them can run at once, fed from one queue, longest expected run first, under one progress bar.

A worker that dies with its run (segfault, OOM kill, ``--timeout``) is replaced for the next run; the run is
recorded as failed with its log tail.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lorafam.arena.results import RunResult, TrainInfo, collect_meta, read_result, write_result
from lorafam.arena.spec import Experiment


def result_path(folder: Path, exp: Experiment) -> Path:
    return folder / f"{exp.run_id}.json"


def worker_count(settings: dict[str, Any], device: str = "cpu") -> int:
    """How many runs go at once: the ``workers`` setting (default 1), or for ``auto`` one per ``threads`` cores
    (at most 4) on a CPU and one on a GPU. Whether parallel runs pay off depends on the machine's memory bandwidth:
    on a 2-core AMD EPYC two 1-thread runs did no more work than one 2-thread run (docs/arena.md)."""
    n = settings.get("workers", 1)
    if n in (None, "auto"):
        if device != "cpu":
            return 1
        threads = max(int(settings.get("threads", 2)), 1)
        return max(1, min(4, (os.cpu_count() or 1) // threads))
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"arena setting workers: expected a positive integer or 'auto', got {n!r}")
    return n


class Board:
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

    def __enter__(self) -> Board:
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


def run_pool(
    todo: list[Experiment],
    folder: Path,
    device: str,
    timeout_s: float | None,
    n_workers: int,
    board: Board,
    record: Callable[[str, str, float], None],
) -> None:
    """Run ``todo`` on ``n_workers`` worker processes, longest expected first; ``record(run_id, status, cpu_s)``
    after each run."""
    from lorafam.arena.eta import expected_order

    jobs: queue.Queue[Experiment] = queue.Queue()
    for exp in expected_order(todo, folder.parent):
        jobs.put(exp)

    def drain() -> None:
        with contextlib.closing(Worker(int(todo[0].settings.get("threads", 1)))) as worker:
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
                record(exp.run_id, status, spent)

    if not todo:
        return
    pool = [threading.Thread(target=drain, daemon=True) for _ in range(min(n_workers, len(todo)))]
    for t in pool:
        t.start()
    for t in pool:
        while t.is_alive():
            t.join(0.5)  # a short join keeps Ctrl-C responsive in the main thread


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
