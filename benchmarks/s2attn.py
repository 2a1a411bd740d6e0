"""S²-Attn vs full attention for LongLoRA training on the default model, at long sequence lengths (batch 1).

Run (from the repository root):
    flock /tmp/lorafam-bench.lock python benchmarks/s2attn.py [--seqs 2048 4096 --threads 2 --rounds 2]

The same LongLoRA model (LoRA r=8 on q/k/v/o, trainable embeddings and norms, AdamW) trains with S²-Attn
(group ratio 1/4, no wrap-around) and with full attention. Step time: one process, one model, the attention
implementation switched between steps (A B B A …); medians and their ratio. Peak RSS: each (length, attention)
pair trains in its own process and the parent reads the child's ``ru_maxrss`` from ``os.wait4``.
Results: ``benchmarks/results/s2attn.json`` and the "S²-Attn" section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "s2attn.json"
SECTION = "s2attn"
sys.path.insert(0, str(REPO))

from benchmarks.qlora import child_peak, update_markdown, write_json  # noqa: E402


def _setup(args: argparse.Namespace):
    import torch

    import lorafam as lf

    torch.manual_seed(0)
    model = lf.load_model()
    lf.attach(model, lf.LongLoraConfig(rank=8, alpha=16)).train()
    return model, lf.make_optimizer(model, lr=2e-4)


def _use(model, s2: bool) -> None:
    from lorafam.attention import s2attn

    model.set_attn_implementation(s2attn.ATTN_NAME if s2 else "sdpa")


def _step(model, opt, x) -> float:
    t0 = time.perf_counter()
    model(x, labels=x).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _x(seq: int):
    import torch

    return torch.randint(0, 49152, (1, seq), generator=torch.Generator().manual_seed(0))


def child_memory(args: argparse.Namespace, seq: int, s2: bool) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model, opt = _setup(args)
    _use(model, s2)
    t = _step(model, opt, _x(seq))
    print("RESULT " + json.dumps({"first_step_s": t}), flush=True)


def child_time(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model, opt = _setup(args)
    out = {}
    for seq in args.seqs:
        x = _x(seq)
        times: dict[str, list[float]] = {"s2attn": [], "full": []}
        for name in ("s2attn", "full"):  # warm-up
            _use(model, name == "s2attn")
            _step(model, opt, x)
        for r in range(args.rounds):
            for name in ("s2attn", "full") if r % 2 == 0 else ("full", "s2attn"):
                _use(model, name == "s2attn")
                times[name].append(_step(model, opt, x))
        med = {k: statistics.median(v) for k, v in times.items()}
        out[str(seq)] = {"step_s": times, "median_step_s": med, "ratio_s2_over_full": med["s2attn"] / med["full"]}
        print(f"seq {seq}: {out[str(seq)]}", file=sys.stderr, flush=True)
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seqs", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", choices=["mem", "time"])
    p.add_argument("--seq", type=int)
    p.add_argument("--s2", type=int, choices=[0, 1])
    args = p.parse_args()
    if args.child == "time":
        return child_time(args)
    if args.child == "mem":
        return child_memory(args, args.seq, bool(args.s2))
    common = [
        __file__,
        "--threads",
        str(args.threads),
        "--rounds",
        str(args.rounds),
        "--seqs",
        *map(str, args.seqs),
    ]
    mem = {
        f"{seq}-{'s2attn' if s2 else 'full'}": child_peak(
            [*common, "--child", "mem", "--seq", str(seq), "--s2", str(s2)]
        )
        for seq in args.seqs
        for s2 in (1, 0)
    }
    timing = child_peak([*common, "--child", "time"])
    import torch

    data = {
        "setup": {**vars(args), "model": "SmolLM2-135M-Instruct", "lora": "r=8 q,k,v,o + embeddings/norms",
                  "group_size_ratio": 0.25, "torch": torch.__version__},
        "memory": mem,
        "time": timing,
    }  # fmt: skip
    write_json(RESULT, data)
    rows = []
    for seq in args.seqs:
        t = timing[str(seq)]
        ms, mf = mem[f"{seq}-s2attn"], mem[f"{seq}-full"]
        rows.append(
            f"| {seq} | {t['median_step_s']['s2attn']:.2f} s | {t['median_step_s']['full']:.2f} s | "
            f"**{t['ratio_s2_over_full']:.3f}** | {ms['lifetime_peak_rss_mib']:.0f} MiB | "
            f"{mf['lifetime_peak_rss_mib']:.0f} MiB | {ms['lifetime_peak_rss_mib'] / mf['lifetime_peak_rss_mib']:.3f} |"
        )
    body = f"""## S²-Attn (LongLoRA) vs full attention

`flock /tmp/lorafam-bench.lock python benchmarks/s2attn.py` — SmolLM2-135M-Instruct, LongLoRA (LoRA r=8 on
q/k/v/o, trainable embeddings and norms), batch 1, group ratio 1/4 without wrap-around, {args.threads} threads,
fp32. Step = forward + backward + AdamW. Full attention is transformers' SDPA. Target: ≤ 0.7× step time at 4096.
Results: `benchmarks/results/s2attn.json`.

| seq | S²-Attn step | full-attention step | ratio | S²-Attn peak RSS | full peak RSS | ratio |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    update_markdown(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
