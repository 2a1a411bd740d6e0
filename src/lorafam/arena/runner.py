"""Run an arena: every experiment in its own subprocess, one at a time, resumable, with one progress bar.

- A finished run (status "ok", same settings hash, same lorafam version and machine) is skipped on re-run.
- A run whose process crashes (exception, OOM kill, segfault) is recorded as "failed" with its error and log
  tail; the arena goes on.
- A result from another lorafam version or machine is moved to ``_kept-apart/`` and the run is redone; the
  report lists what was kept apart.
- Peak RSS comes from the kernel's accounting of the finished child (``wait4``), so it is that run's own peak.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

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
    """Run (or resume) the experiments; results land in ``results_dir/<budget>/<run_id>.json``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

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
    manifest = {
        "budget": budget,
        "device": device,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "runs": [e.run_id for e in experiments],
        "load_start": [round(x, 2) for x in os.getloadavg()],  # a shared machine slows every figure: say so
    }
    atomic_write_json(folder / "arena.json", manifest)
    atomic_write_json(root / "latest.json", {"budget": budget, "folder": budget})
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not show_progress, transient=False) as bar:
        task = bar.add_task("arena", total=len(experiments))
        for i, exp in enumerate(experiments):
            path = result_path(folder, exp)
            done, other_env = is_done(path, exp, env_key)
            if done:
                outcome.skipped.append(exp.run_id)
                bar.update(task, completed=i + 1)
                continue
            if other_env:
                dest = folder / KEPT_APART / f"{exp.run_id}.{int(time.time())}.json"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), dest)
                outcome.kept_apart.append(exp.run_id)
            source = reusable(root, budget, exp, env_key)
            if source is not None:  # the same run (same settings, version, machine) done under another budget
                result = read_result(source)
                result.run_info.budget = budget
                result.train_info.extra["reused_from"] = f"{source.parent.name}/{source.name}"
                write_result(path, result)
                outcome.skipped.append(exp.run_id)
                bar.update(task, completed=i + 1)
                say(f"[{i + 1}/{len(experiments)}] {exp.run_id}: reused from {source.parent.name}/")
                continue
            bar.update(task, description=f"{exp.run_id} ({i + 1}/{len(experiments)})")

            def advance(frac: float, i: int = i) -> None:
                bar.update(task, completed=i + min(max(frac, 0.0), 0.999))

            status = run_one(exp, path, device, advance, timeout_s)
            (outcome.failed if status == "failed" else outcome.ran).append(exp.run_id)
            bar.update(task, completed=i + 1)
            say(f"[{i + 1}/{len(experiments)}] {exp.run_id}: {status}")
    outcome.seconds = time.perf_counter() - start
    manifest["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["seconds"] = round(outcome.seconds, 1)
    manifest["load_end"] = [round(x, 2) for x in os.getloadavg()]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    manifest["cpu_s"] = round(children.ru_utime + children.ru_stime, 1)  # every run process, this arena
    atomic_write_json(folder / "arena.json", manifest)
    return outcome


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


def run_one(
    exp: Experiment,
    path: Path,
    device: str = "cpu",
    advance: Callable[[float], None] | None = None,
    timeout_s: float | None = None,
) -> str:
    """Run one experiment in a fresh Python process; returns its status. Never raises for a failed run."""
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
    threads = str(int(exp.settings.get("threads", 2)))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [sys.executable, "-m", "lorafam.arena.worker"]
    with tempfile.TemporaryDirectory(prefix="lorafam-arena-") as tmp:
        spec_file = Path(tmp) / "experiment.json"
        spec_file.write_text(json.dumps({"experiment": exp.to_dict(), "device": device, "command": sys.argv}))
        if path.exists():
            path.unlink()
        started = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as logf:
            proc = subprocess.Popen(
                [*cmd, str(spec_file), str(path)], stdout=subprocess.PIPE, stderr=logf, text=True, env=env
            )
            timer = threading.Timer(timeout_s, proc.kill) if timeout_s else None
            if timer:
                timer.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if line.startswith("@@progress") and advance is not None:
                        with contextlib.suppress(IndexError, ValueError):
                            advance(float(line.split()[1]))
                    else:
                        logf.write(line)
                _, wait_status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(wait_status)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                if timer:
                    timer.cancel()
        elapsed = time.perf_counter() - started
    peak_mb = usage.ru_maxrss / 1024
    try:
        result = read_result(path)
    except (ValueError, FileNotFoundError):
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        why = "timed out" if timeout_s and elapsed >= timeout_s else f"exit code {proc.returncode}"
        result = RunResult(
            exp.run_info(
                status="failed",
                error=f"the run process died ({why}); see {log_path.name}",
                started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                duration_s=elapsed,
                threads=int(threads),
                device=device,
            ),
            TrainInfo(settings=dict(exp.settings), extra={"log_tail": tail}),
            collect_meta(device),
        )
    result.run_info.peak_rss_mb = round(peak_mb, 1)
    result.run_info.duration_s = elapsed  # the whole process, start-up and imports included
    result.run_info.cpu_s = round(usage.ru_utime + usage.ru_stime, 2)
    write_result(path, result)
    return result.run_info.status
