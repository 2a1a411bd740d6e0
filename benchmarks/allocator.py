"""glibc malloc defaults vs :func:`lorafam.tune_allocator`: page faults, step time and peak RSS per training step.

Run (from the repository root):
    python -m benchmarks.allocator [--pairs 2] [--rounds 6] [--shapes 1x256:1 4x256:2]

The allocator is process-wide, so the two sides cannot share a process: each side is its own child process
(``LORAFAM_TUNE_MALLOC=0`` for the default, ``1`` for tuned), run in adjacent pairs whose order alternates
(default tuned, tuned default, …). Inside a child, LoRA and DoRA steps are interleaved round by round
(SmolLM2-135M, r = 16 on all 7 projections, fp32, AdamW) after 3 warm-up steps; per step, the wall time and the
minor page faults (``getrusage``). A pair's ratio is tuned / default of the children's median step times; the
result gives the median and spread of those per-pair ratios, beside each child's own figures and VmHWM.
Results: ``benchmarks/results/allocator.json``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from typing import Any

from benchmarks.common import (
    RESULTS,
    child_report,
    load_average,
    machine_info,
    paired,
    python,
    run_child,
    write_json,
)

ARMS = ("lora", "dora")


def child(args: argparse.Namespace) -> None:
    import torch

    from benchmarks.speed_parts import Stepper, build, tokens
    from lorafam.core.allocator import tune_allocator

    tuning = tune_allocator()  # LORAFAM_TUNE_MALLOC from the parent decides which side this child is
    torch.set_num_threads(args.threads)
    batch = tokens(256 if args.tiny else 49152, args.batch, args.seq)
    steppers = {arm: Stepper(build(arm, args.tiny), batch) for arm in ARMS}
    for s in steppers.values():
        for _ in range(3):
            s.step()
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    faults: dict[str, list[int]] = {arm: [] for arm in ARMS}
    for r in range(args.rounds):
        for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            steppers[arm].step()
            times[arm].append(time.perf_counter() - t0)
            faults[arm].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    child_report({"tuned": tuning.applied, "reason": tuning.reason, "step_s": times, "minor_faults": faults})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2, help="adjacent (default, tuned) process pairs per shape")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved LoRA/DoRA rounds inside each process")
    ap.add_argument("--shapes", nargs="+", default=["1x256:1", "4x256:2"], help="BATCHxSEQ:THREADS each")
    ap.add_argument("--tiny", action="store_true", help="tiny random Llama instead of SmolLM2 (smoke run)")
    ap.add_argument("--child", choices=("default", "tuned"), help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, default=256, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    t0 = time.perf_counter()
    data: dict[str, Any] = {
        "benchmark": "allocator",
        "command": "python -m benchmarks.allocator " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "tiny_llama" if args.tiny else "SmolLM2-135M-Instruct",
        "machine": machine_info(),
        "load_average_start": load_average(),
        "shapes": {},
    }
    for spec in args.shapes:
        try:
            size, threads = spec.split(":")
            batch, seq = (int(v) for v in size.split("x"))
            n_threads = int(threads)
        except ValueError:
            ap.error(f"--shapes: {spec!r} is not BATCHxSEQ:THREADS (e.g. 4x256:2)")
        runs: dict[str, list[dict[str, Any]]] = {"default": [], "tuned": []}
        for p in range(args.pairs):
            for side in ("default", "tuned") if p % 2 == 0 else ("tuned", "default"):
                argv_child = [python(), "-m", "benchmarks.allocator", "--child", side, "--batch", str(batch),
                              "--seq", str(seq), "--threads", str(n_threads), "--rounds", str(args.rounds)]  # fmt: skip
                if args.tiny:
                    argv_child.append("--tiny")
                env = {"LORAFAM_TUNE_MALLOC": "1" if side == "tuned" else "0"}
                done = run_child(argv_child, env=env)
                res = done.get("result")
                if done.get("returncode") != 0 or not res:
                    raise SystemExit(f"allocator child {side} {spec} failed: {done.get('stderr_tail', done)}")
                if res["tuned"] != (side == "tuned"):
                    raise SystemExit(f"allocator child {side} {spec}: tuning {res['tuned']} ({res['reason']})")
                run = {
                    "pair": p,
                    "reason": res["reason"],
                    "median_step_s": {a: statistics.median(v) for a, v in res["step_s"].items()},
                    "median_faults": {a: statistics.median(v) for a, v in res["minor_faults"].items()},
                    "peak_rss_mib": (res.get("vm_hwm_kib") or 0) / 1024,
                    "step_s": res["step_s"],
                    "minor_faults": res["minor_faults"],
                }
                runs[side].append(run)
                print(f"[{spec} pair {p + 1}/{args.pairs}] {side:7s} "
                      + ", ".join(f"{a} {run['median_step_s'][a]:.3f} s ({run['median_faults'][a]:.0f} faults)"
                                  for a in ARMS) + f", peak {run['peak_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
        d, t = runs["default"], runs["tuned"]
        data["shapes"][spec] = {
            "batch": batch,
            "seq": seq,
            "threads": n_threads,
            "runs": runs,
            "tuned / default": {
                **{
                    f"{a} step": paired([r["median_step_s"][a] for r in t], [r["median_step_s"][a] for r in d])
                    for a in ARMS
                },
                "peak RSS": paired([r["peak_rss_mib"] for r in t], [r["peak_rss_mib"] for r in d]),
            },  # fmt: skip
        }
        for k, v in data["shapes"][spec]["tuned / default"].items():
            print(f"{spec}: tuned / default {k}: {v['median']:.3f} ({v['min']:.3f}–{v['max']:.3f})", flush=True)
    data["load_average_end"] = load_average()
    data["wall_s"] = time.perf_counter() - t0
    out = RESULTS / ("allocator_tiny.json" if args.tiny else "allocator.json")
    write_json(out, data)
    print(f"wrote {out} ({data['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
