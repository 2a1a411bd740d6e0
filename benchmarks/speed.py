"""Issue 16 in one command: every speed target of lorafam measured in one interleaved run on this machine.

    python -m benchmarks.speed                 # SmolLM2-135M-Instruct; writes benchmarks/results/speed.json
    python -m benchmarks.speed --tiny          # smoke run on a tiny random Llama (speed_tiny.json)
    python -m benchmarks.speed --parts train,gen --no-markdown

Parts (``--parts``, default all; each interleaved A B A B … with per-round paired ratios):

- ``machine``  CPU model and flags (AMX or not), load average, this machine's ``F.linear`` throughput at the
               model's own GEMM shapes in fp32 and bf16, and what the arena's ``bf16: auto`` decides here.
- ``train``    training steps (forward + backward + AdamW) of lorafam LoRA, DoRA, QLoRA (NF4 base) and PEFT LoRA
               at ``--batch`` × ``--seq``, plus LoRA and QLoRA at the arena's short-sequence shape; achieved
               GFLOP/s (torch's flop counter over the measured median step). Where bf16 is native (AMX), also
               lorafam's bf16 regime as ``lorafam train`` runs it, eager and with ``torch_compile: true``.
- ``bf16loss`` (native bf16 only) the first ``--bf16-loss-steps`` losses of fp32, bf16 and bf16-compiled LoRA
               from the same init on the same text: the "at matching loss" half of the bf16 target.
- ``rss``      peak RSS of each arm, each training in its own process.
- ``gen``      greedy decoding, batch 1, KV cache: base model vs unmerged LoRA, DoRA (lorafam) and PEFT LoRA.
- ``s2``       S²-Attn vs full (SDPA) attention: one layer's attention call, forward + backward, at 2048/4096.
- ``s2step``   the whole LongLoRA training step with S²-Attn vs with full attention (same model, switched
               between steps) at 2048/4096, ``--s2-threads`` threads; also written as ``s2attn.json``.

Results: ``benchmarks/results/speed.json`` and the ``speed`` section of BENCHMARKS.md (targets, ratios, machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from benchmarks.common import RESULTS, gemm_peak, load_average, machine_info, write_json
from benchmarks.speed_parts import (
    child_rss,
    log_to_stderr,
    model_gemm_shapes,
    part_bf16loss,
    part_gen,
    part_rss,
    part_s2,
    part_s2step,
    part_train,
    s2attn_file,
)

PARTS = ("machine", "train", "bf16loss", "rss", "gen", "s2", "s2step")


def part_machine(args: argparse.Namespace) -> dict[str, Any]:
    """Facts and reference throughputs; the bf16 decision is the arena's own function, run here."""
    from benchmarks.speed_parts import _smollm_config, load_base
    from lorafam.arena.runner import bf16_pays_off

    cfg = load_base(True).config if args.tiny else _smollm_config()
    shapes, counts = model_gemm_shapes(cfg, args.batch * args.seq)
    peak = gemm_peak(shapes, (torch.float32, torch.bfloat16), rounds=3, weights=counts)
    use_bf16, probe = bf16_pays_off("cpu", threads=torch.get_num_threads())
    flags = machine_info()["cpu_flags"]
    amx = "amx_bf16" in flags
    fp32, bf16 = peak["float32"]["peak_gflops"], peak["bfloat16"]["peak_gflops"]
    why = (
        f"bf16 GEMMs run at {bf16:.1f} GFLOP/s against {fp32:.1f} for fp32 at this model's shapes "
        f"({bf16 / fp32:.2f}×); the arena's probe timed fp32 {1e3 * probe['fp32_matmul_s']:.1f} ms vs bf16 "
        f"{1e3 * probe['bf16_matmul_s']:.1f} ms and picks bf16 only at ≥ 1.2× faster"
    )
    return {
        "amx": amx,
        "gemm": peak,
        "bf16_auto": {"uses_bf16": use_bf16, "probe": probe, "why": why},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of: {', '.join(PARTS)}")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per comparison")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--arena-batch", type=int, default=4, help="the arena quick budget's batch size")
    ap.add_argument("--arena-seq", type=int, default=64, help="about the arena tasks' padded length")
    ap.add_argument("--issue-batch", type=int, default=4, help="the batch of issue 16's own DoRA measurement")
    ap.add_argument("--issue-seq", type=int, default=256, help="the sequence length of issue 16's measurement")
    ap.add_argument("--rss-steps", type=int, default=2)
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 arms even where bf16 is native")
    ap.add_argument("--bf16-loss-steps", type=int, default=20, help="steps of the fp32-vs-bf16 loss comparison")
    ap.add_argument("--bf16-loss-lr", type=float, default=2e-4)
    ap.add_argument("--gen-tokens", type=int, default=32, help="decoded tokens per round (paired token by token)")
    ap.add_argument("--prompt", type=int, default=32, help="prompt length for decoding")
    ap.add_argument("--s2-seqs", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--s2-step-rounds", type=int, default=5, help="interleaved rounds of the whole S² step")
    ap.add_argument("--s2-threads", type=int, default=2, help="torch threads for the whole S² step")
    ap.add_argument(
        "--s2-step-budget-s", type=float, default=0.0,
        help="seconds the s2step part may take (0: no limit); rounds that would not fit are not started",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)")
    ap.add_argument("--tiny", action="store_true", help="tiny random Llama instead of SmolLM2 (smoke run)")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--child-rss", choices=("lora", "dora", "qlora", "peft-lora"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lorafam.core.allocator import tune_allocator

    allocator = tune_allocator()  # as the CLI does for `lorafam train` (every arm and RSS child alike)
    if args.child_rss:
        child_rss(args)
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    import warnings

    warnings.filterwarnings("ignore", message=".*register_constant.*")
    t0 = time.perf_counter()
    data: dict[str, Any] = {
        "benchmark": "speed",
        "command": "python -m benchmarks.speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": {k: v for k, v in vars(args).items() if k not in ("child_rss", "no_markdown")},
        "model": "tiny_llama" if args.tiny else "SmolLM2-135M-Instruct",
        "machine": machine_info(),
        "load_average_start": load_average(),
        "allocator": {"applied": allocator.applied, "reason": allocator.reason, "settings": allocator.settings},
    }
    data["started_utc"] = data["machine"]["time_utc"]  # kept when a partial run carries an older machine part
    runners = {
        "train": part_train,
        "bf16loss": part_bf16loss,
        "rss": part_rss,
        "gen": part_gen,
        "s2": part_s2,
        "s2step": part_s2step,
    }
    for part in PARTS:
        if part not in parts:
            continue
        started, load_start = time.perf_counter(), load_average()
        log_to_stderr(f"== {part} (load {load_start})")
        if part == "machine":  # machine_info() plus the measured references
            data["machine"] |= part_machine(args)
        else:
            data[part] = runners[part](args, log_to_stderr)
        data[part] |= {
            "wall_s": time.perf_counter() - started,
            "load_start": load_start,
            "load_end": load_average(),
        }
    data["load_average_end"] = load_average()
    data["wall_s"] = time.perf_counter() - t0
    out_path = RESULTS / ("speed_tiny.json" if args.tiny else "speed.json")
    if out_path.exists() and set(parts) != set(PARTS):  # a partial run keeps the other parts, marked as such
        old = json.loads(out_path.read_text())
        earlier = old.get("parts_from_earlier_runs", {})  # what the old file itself had kept from before it
        here = {
            "time_utc": old.get("started_utc", old.get("machine", {}).get("time_utc")),
            "command": old.get("command"),
        }
        for part in PARTS:
            if part == "machine" and "gemm" not in data["machine"] and "gemm" in old.get("machine", {}):
                data["machine"] = old["machine"]
                data.setdefault("parts_from_earlier_runs", {})[part] = earlier.get(part, here)
            elif part != "machine" and part not in data and part in old:
                data[part] = old[part]
                data.setdefault("parts_from_earlier_runs", {})[part] = earlier.get(part, here)
    write_json(out_path, data)
    if "s2step" in parts and not args.tiny:
        write_json(RESULTS / "s2attn.json", s2attn_file(data))
    from benchmarks.speed_report import summary, write_markdown

    data["summary"] = summary(data)
    write_json(out_path, data)
    if not args.no_markdown and not args.tiny:
        write_markdown(data)
    for row in data["summary"]:
        print(f"{row['target']}: {row['measured']}  [{row['status']}]")
    print(f"wrote {out_path} ({data['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
