"""Shared helpers for the benchmark scripts: fair timing, peak memory, machine facts, result files.

Rules these helpers encode (see DESIGN.md "Measuring"):

- **Time** is compared *interleaved in one process*: every round runs each contender once (A B A B …, with the
  order alternating between rounds), and we report medians. Noise from other jobs on the machine then hits all
  contenders alike, so ratios stay fair even when absolute times drift.
- **Peak memory** is measured *per configuration in its own process*: the child's ``VmHWM`` (peak resident set
  size of its own address space), untouched by anything else the parent did.
- **The physical reference** is the machine's measured matmul throughput (:func:`matmul_gflops`); a step's
  achieved FLOP/s is counted with ``torch.utils.flop_counter.FlopCounterMode`` (actual matmul FLOPs of forward +
  backward), not estimated.

Other benchmark scripts may import from here (``from benchmarks.common import ...`` when run as
``python -m benchmarks.<name>`` from the repository root).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
LOCK = "/tmp/lorafam-bench.lock"

_MD_INTRO = """# Benchmarks

Speed and memory of lorafam measured against Hugging Face PEFT **on the same machine, in the same run**. Each
section is written by a script under `benchmarks/` (its command is given in the section) from a JSON file under
`benchmarks/results/`. Absolute times on a shared CPU drift from run to run; read the **ratios**, which come from
interleaved measurements (A B A B …, medians) inside one process. Peak memory is measured per configuration in its
own process.
"""


# ---------------------------------------------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def _git() -> dict[str, Any]:
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": run("rev-parse", "HEAD").strip(), "dirty": bool(run("status", "--porcelain").strip())}


def machine_info() -> dict[str, Any]:
    """CPU, thread count, library versions and git state: what a reader needs to judge a number."""
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    try:
        bf16_native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16_native = None
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16_supported": bf16_native,
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("torch", "transformers", "peft", "lorafam")},
        "git": _git(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def matmul_gflops(
    dtype: torch.dtype = torch.float32,
    m: int = 1024,
    k: int = 576,
    n: int = 1536,
    seconds: float = 1.0,
) -> float:
    """Measured GFLOP/s of ``F.linear`` ((m, k) × (n, k)ᵀ) in ``dtype`` on this machine, current thread count.

    The default shape is one SmolLM2 MLP projection over a 4 × 256 token batch: the GEMMs a train step is made
    of. The median over repeated calls for about ``seconds`` is reported.
    """
    x = torch.randn(m, k).to(dtype)
    w = torch.randn(n, k).to(dtype)
    torch.nn.functional.linear(x, w)  # warm-up (kernel selection, first-touch)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        t = time.perf_counter()
        torch.nn.functional.linear(x, w)
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times) / 1e9


def gemm_peak(
    shapes: Mapping[str, tuple[int, int, int]],
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16),
    rounds: int = 3,
    weights: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """This machine's ``F.linear`` throughput at given (tokens, in, out) shapes, per dtype, interleaved.

    Every round times each (shape, dtype) once, in alternating order; per shape the median is kept. ``peak`` per
    dtype is the FLOP-weighted figure for the mix (Σ flops / Σ time, each shape counted ``weights[name]`` times):
    what a step made only of these GEMMs would reach.
    """
    weights = weights or {name: 1.0 for name in shapes}
    ops: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
    for name, (m, k, n) in shapes.items():
        x, w = torch.randn(m, k), torch.randn(n, k)
        for dt in dtypes:
            ops[(name, dt)] = (x.to(dt), w.to(dt))
    for x, w in ops.values():  # warm-up: kernel selection, first touch
        torch.nn.functional.linear(x, w)
    times: dict[tuple[str, torch.dtype], list[float]] = {key: [] for key in ops}
    keys = list(ops)
    for r in range(rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            x, w = ops[key]
            t = time.perf_counter()
            torch.nn.functional.linear(x, w)
            times[key].append(time.perf_counter() - t)
    out: dict[str, Any] = {"shapes": {k: list(v) for k, v in shapes.items()}, "weights": dict(weights)}
    for dt in dtypes:
        label = str(dt).removeprefix("torch.")
        per = {}
        flops = secs = 0.0
        for name, (m, k, n) in shapes.items():
            t = statistics.median(times[(name, dt)])
            per[name] = 2 * m * k * n / t / 1e9
            flops += weights[name] * 2 * m * k * n
            secs += weights[name] * t
        out[label] = {"per_shape_gflops": per, "peak_gflops": flops / secs / 1e9}
    return out


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Per-round ratios a[i] / b[i] of two interleaved contenders, their median and spread (min, max).

    The ratio is taken inside each round, where both sides saw the same machine load; a ratio of medians would
    mix rounds of different load.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired() needs two equally long, non-empty series, got {len(a)} and {len(b)}")
    r = [x / y for x, y in zip(a, b)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "rounds": r}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (what ``uptime`` prints)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs torch's flop counter sees while running ``fn`` once (matmuls, attention; forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------------------
# Interleaved timing
# ---------------------------------------------------------------------------------------------------------------
def summarize(times: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, quartile spread and the raw list (seconds)."""
    ts = sorted(times)
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0], ts[0], ts[0]]
    return {
        "median_s": statistics.median(ts),
        "min_s": ts[0],
        "max_s": ts[-1],
        "iqr_s": q[2] - q[0],
        "n": len(ts),
        "raw_s": list(times),
    }


def interleaved(
    contenders: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    log: Callable[[str], None] | None = print,
    deadline: float | None = None,
    first_round_s: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """Time each contender ``repeats`` times, interleaved round by round; return :func:`summarize` per name.

    Every round calls each contender once; odd rounds reverse the order (A B, B A, …) so that neither side
    always runs right after the other. ``warmup`` untimed rounds come first (first-call allocations, caches).
    With a ``deadline`` (a ``time.perf_counter()`` value) a round is started only if it is expected to end before
    it: the first round is expected to take ``first_round_s``, later ones as long as the one before. Rounds not
    started are not timed (``{}`` when none was), so a budgeted run ends with fewer rounds instead of being killed.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    expected = first_round_s
    for r in range(repeats):
        if deadline is not None and time.perf_counter() + expected > deadline:
            if log is not None:
                log(f"  round {r + 1}/{repeats} not started: expected {expected:.0f} s, past the deadline")
            break
        started = time.perf_counter()
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            t = time.perf_counter()
            contenders[name]()
            dt = time.perf_counter() - t
            times[name].append(dt)
            if log is not None:
                log(f"  round {r + 1}/{repeats}  {name:<28} {dt:8.3f} s")
        expected = time.perf_counter() - started
    return {name: summarize(ts) for name, ts in times.items() if ts}


# ---------------------------------------------------------------------------------------------------------------
# Peak memory of a child process
# ---------------------------------------------------------------------------------------------------------------
def _vm_hwm_kib(pid: int | str = "self") -> int | None:
    """Peak resident set size ("VmHWM") of one process's current address space, KiB; None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def run_child(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float | None = None) -> dict:
    """Run ``argv`` in its own process; return its peak RSS (MiB), wall time, return code and JSON answer.

    The child may print one line starting with ``RESULT `` followed by JSON (see :func:`child_report`); it is
    parsed into ``"result"``. Peak RSS is the child's ``VmHWM`` (high-water mark of its own address space): the
    child's own report when it gives one, else the last value polled from ``/proc`` while it ran. (We do not use
    ``ru_maxrss``: Linux carries the parent's resident size at fork into it across ``exec``.)
    """
    full_env = {**os.environ, **(env or {})}
    t0 = time.perf_counter()
    polled: int | None = None
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen(list(argv), stdout=out_f, stderr=err_f, text=True, env=full_env)
        while proc.poll() is None:
            hwm = _vm_hwm_kib(proc.pid)
            if hwm is not None:
                polled = max(polled or 0, hwm)
            if timeout is not None and time.perf_counter() - t0 > timeout:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    result = None
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    reported = (result or {}).get("vm_hwm_kib")
    peak_kib = reported if reported is not None else polled
    return {
        "returncode": proc.returncode,
        "wall_s": wall,
        "peak_rss_mib": None if peak_kib is None else peak_kib / 1024,
        "peak_rss_source": "child VmHWM" if reported is not None else "polled VmHWM",
        "result": result,
        "stderr_tail": err[-2000:] if proc.returncode else "",
    }


def child_report(payload: Mapping[str, Any]) -> None:
    """Called *in* a child: print its ``RESULT`` line with its own peak RSS (``vm_hwm_kib``) added."""
    data = dict(payload)
    data["vm_hwm_kib"] = _vm_hwm_kib()
    print("RESULT " + json.dumps(data), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Result files
# ---------------------------------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (lorafam's writer: temporary file, fsync, rename, umask modes)."""
    from lorafam.core.checkpoint import atomic_write_text

    atomic_write_text(path, text)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def update_markdown_section(section: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the block between ``<!-- BEGIN section -->`` and ``<!-- END section -->``.

    The file is created with a short introduction when missing; other sections are left untouched.
    """
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    text = path.read_text() if path.exists() else _MD_INTRO
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_atomic(path, text)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def python() -> str:
    return sys.executable
