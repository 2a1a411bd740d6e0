"""Serving many adapters: lorafam's batched engine vs one adapter, vs a PEFT server that batches per adapter.

    flock /work/timing.lock python -m benchmarks.serve                      # SmolLM2-135M, all four parts
    python -m benchmarks.serve --smoke                                      # tiny random Llama, seconds
    python -m benchmarks.serve --parts sweep --adapters 1,4,16,64 --alpha 1.0 --rate 8 --in-len 64 --out-len 32

Workload knobs follow S-LoRA's benchmark suite (Sheng et al., "S-LoRA: Serving Thousands of Concurrent LoRA
Adapters", MLSys 2024, arXiv 2311.03285): the number of adapters, a power-law popularity (adapter i is asked for with
probability ∝ (i+1)^−alpha), the request rate (Poisson arrivals; ``inf`` = all at once, i.e. offline throughput),
input/output lengths and the rank mix. All adapters are random (non-identity) weights on SmolLM2-135M-Instruct in
fp32; outputs are forced to ``out-len`` tokens (EOS ignored) so every contender does the same work.

Parts (timed interleaved in one process: every round runs each contender once; paired per-round ratios):

- ``mixed``   decode throughput of one batch of 8 rows over 8 different adapters (LoRA r=8/16/32, rsLoRA, DoRA,
              AdaLoRA, Quantum-PEFT, aLoRA) / 8 rows of one LoRA adapter (unmerged), and the base model's batch of 8.
              PEFT's own mixed batch (``adapter_names``, 8 LoRA adapters: it refuses DoRA there) is measured the same
              way for reference. Target: ≥ 0.8.
- ``sweep``   the S-LoRA workload at 1/4/16/64 adapters (q,k,v,o, rank mix), ours (continuous batching, mixed
              adapters per step) vs a PEFT server that batches per adapter (oldest waiting request's adapter first,
              all its waiting requests in one ``generate``), tokens/s over the whole run.
- ``merge``   one hot adapter, 8 rows: throughput unmerged / merged (our exact hot merge).
- ``alora``   aLoRA time to first token on a 512/1024/2048-token history the base model just produced: with the
              shared prefix cache vs without it.

Results: benchmarks/results/serve.json and the ``serve`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import lorafam as lf
from benchmarks.common import RESULTS, machine_info, update_markdown_section, write_json
from benchmarks.serve_common import (
    INVOCATION,
    base_model,
    interleave,
    med,
    paired,
    prompt_ids,
    run_batch,
    spread,
    write_adapter,
)
from benchmarks.serve_report import markdown, screenshot
from benchmarks.serve_sweep import part_sweep
from lorafam.serve.batching import Engine, EngineConfig, GenRequest


# ---------------------------------------------------------------------------------------------------------------
def part_mixed(args: argparse.Namespace, base: Any, tok: Any, model_dir: str | None, root: Path) -> dict[str, Any]:
    rows = 8
    cfgs = {
        "lora-r8": lf.LoraConfig(rank=8, alpha=16, targets="all-linear"),
        "lora-r16": lf.LoraConfig(rank=16, alpha=32, targets="all-linear"),
        "lora-r32": lf.LoraConfig(rank=32, alpha=64, targets="all-linear"),
        "rslora-r16": lf.LoraConfig(rank=16, alpha=16, targets="all-linear", use_rslora=True),
        "dora-r16": lf.DoraConfig(rank=16, alpha=32, targets="all-linear"),
        "adalora-r12": lf.AdaLoraConfig(rank=12, alpha=16, targets="all-linear"),
        "quantum-r16": lf.QuantumConfig(rank=16, alpha=16, targets="all-linear"),
        "alora-r16": lf.ALoraConfig(rank=16, alpha=16, targets="all-linear", invocation_tokens=INVOCATION),
    }
    engine = Engine(base, tok, base_id="base", config=EngineConfig(cache_tokens=0, merge_hot=False)).start()
    for i, (name, cfg) in enumerate(cfgs.items()):
        engine.load(name, write_adapter(model_dir, root / name, cfg, i), check_base=False)
    prompts = [prompt_ids(tok, args.in_len, i) + INVOCATION for i in range(rows)]
    mixed = list(cfgs)
    times = interleave(
        {
            "mixed_8_adapters": lambda: run_batch(engine, mixed, prompts, args.out_len),
            "mixed_8_concat": lambda: _with_kernel(engine, "concat", mixed, prompts, args.out_len),
            "one_adapter": lambda: run_batch(engine, ["lora-r16"] * rows, prompts, args.out_len),
            "base": lambda: run_batch(engine, ["base"] * rows, prompts, args.out_len),
        },
        args.repeats,
    )
    engine.close()
    out: dict[str, Any] = {
        "rows": rows,
        "adapters": {n: {"method": c.method, "rank": c.rank} for n, c in cfgs.items()},
        "tokens_per_s": {k: med(v) for k, v in times.items()},
        "raw_tokens_per_s": times,
        "ratio_mixed_over_one": paired(times["mixed_8_adapters"], times["one_adapter"]),
        "ratio_spread": spread(times["mixed_8_adapters"], times["one_adapter"]),
        "ratio_one_over_base": paired(times["one_adapter"], times["base"]),
        "ratio_concat_over_one": paired(times["mixed_8_concat"], times["one_adapter"]),
        "ratio_grouped_over_concat": paired(times["mixed_8_adapters"], times["mixed_8_concat"]),
        "ratio_grouped_over_concat_spread": spread(times["mixed_8_adapters"], times["mixed_8_concat"]),
    }
    out["peft"] = _peft_mixed(args, model_dir, tok, root, prompts)
    return out


def _with_kernel(engine: Engine, kernel: str, models: list[str], prompts: list[list[int]], out_len: int) -> float:
    """The same batch with another mixed-adapter kernel (the concatenated one the engine used before)."""
    engine.cfg.mixed_kernel = kernel
    try:
        return run_batch(engine, models, prompts, out_len)
    finally:
        engine.cfg.mixed_kernel = "grouped"


def _peft_mixed(
    args: argparse.Namespace, model_dir: str | None, tok: Any, root: Path, prompts: list[list[int]]
) -> dict:
    """PEFT's mixed-adapter batch (``adapter_names``) over 8 LoRA adapters vs one adapter, generate() tokens/s."""
    from peft import PeftModel

    ranks = [8, 16, 32, 16, 16, 12, 16, 16]
    names = [f"peft-{i}" for i in range(8)]
    for i, (n, r) in enumerate(zip(names, ranks)):
        write_adapter(model_dir, root / n, lf.LoraConfig(rank=r, alpha=2 * r, targets="all-linear"), 100 + i)
    model = PeftModel.from_pretrained(lf.load_model(model_dir), str(root / names[0]), adapter_name=names[0]).eval()
    for n in names[1:]:
        model.load_adapter(str(root / n), adapter_name=n)
    ids = torch.tensor(prompts)

    def run(adapter_names: list[str]) -> float:
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.out_len,
                min_new_tokens=args.out_len,
                do_sample=False,
                adapter_names=adapter_names,
                pad_token_id=0,
            )
        return ids.shape[0] * args.out_len / (time.perf_counter() - t)

    times = interleave({"peft_mixed_8": lambda: run(names), "peft_one": lambda: run([names[1]] * 8)}, args.repeats)
    return {
        "tokens_per_s": {k: med(v) for k, v in times.items()},
        "raw_tokens_per_s": times,
        "ratio_mixed_over_one": paired(times["peft_mixed_8"], times["peft_one"]),
        "ratio_spread": spread(times["peft_mixed_8"], times["peft_one"]),
        "note": "generate() tokens/s incl. an in-len prefill; 8 LoRA adapters (PEFT refuses DoRA with adapter_names)",
    }


# ---------------------------------------------------------------------------------------------------------------
def part_merge(args: argparse.Namespace, base: Any, tok: Any, model_dir: str | None, root: Path) -> dict[str, Any]:
    path = write_adapter(model_dir, root / "hot", lf.LoraConfig(rank=16, alpha=32, targets="all-linear"), 7)
    unmerged = Engine(base, tok, base_id="base", config=EngineConfig(cache_tokens=0, merge_hot=False))
    unmerged.load("hot", path, check_base=False)
    unmerged.start()
    prompts = [prompt_ids(tok, args.in_len, 300 + i) for i in range(8)]

    def merged_run() -> float:
        unmerged.cfg.merge_hot, unmerged.cfg.merge_after = True, 1
        try:
            return run_batch(unmerged, ["hot"] * 8, prompts, args.out_len)
        finally:
            unmerged.cfg.merge_hot = False
            unmerged._call(unmerged._unmerge)

    times = interleave(
        {"unmerged": lambda: run_batch(unmerged, ["hot"] * 8, prompts, args.out_len), "merged": merged_run},
        args.repeats,
    )
    merges = unmerged.stats["merges"]
    unmerged.close()
    return {
        "tokens_per_s": {k: med(v) for k, v in times.items()},
        "raw_tokens_per_s": times,
        "ratio_unmerged_over_merged": paired(times["unmerged"], times["merged"]),
        "ratio_spread": spread(times["unmerged"], times["merged"]),
        "merges": merges,
    }


def part_alora(args: argparse.Namespace, base: Any, tok: Any, model_dir: str | None, root: Path) -> dict[str, Any]:
    path = write_adapter(
        model_dir,
        root / "judge",
        lf.ALoraConfig(rank=32, alpha=32, targets="all-linear", invocation_tokens=INVOCATION),
        8,
    )
    engine = Engine(base, tok, base_id="base", config=EngineConfig(cache_tokens=8192, merge_hot=False)).start()
    engine.load("judge", path, check_base=False)
    out: dict[str, Any] = {}
    lengths = [64, 128] if args.smoke else [512, 1024, 2048]
    for n in lengths:
        history = prompt_ids(tok, n, 400 + n)
        call = history + INVOCATION

        def with_reuse(history: list[int] = history, call: list[int] = call, n: int = n) -> float:
            engine.generate(
                GenRequest(model="base", prompt_ids=history, max_tokens=1, temperature=0)
            )  # the base turn
            done = engine.generate(GenRequest(model="judge", prompt_ids=call, max_tokens=1, temperature=0))
            assert done["cached_tokens"] >= n - engine.prefix.block, done["cached_tokens"]
            return done["ttft_s"]

        def without(call: list[int] = call) -> float:
            req = GenRequest(model="judge", prompt_ids=call, max_tokens=1, temperature=0, use_prefix_cache=False)
            done = engine.generate(req)
            assert done["cached_tokens"] == 0
            return done["ttft_s"]

        engine.generate(
            GenRequest(model="base", prompt_ids=history, max_tokens=1, temperature=0)
        )  # warm the cache
        times = interleave({"reuse": with_reuse, "no_reuse": without}, args.alora_repeats, warmup=False)
        out[str(n)] = {
            "ttft_s": {k: med(v) for k, v in times.items()},
            "raw_ttft_s": times,
            "speedup": paired(times["no_reuse"], times["reuse"]),
            "speedup_spread": spread(times["no_reuse"], times["reuse"]),
        }
    engine.close()
    return out


# ---------------------------------------------------------------------------------------------------------------
def _uptime() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny random model, few requests (seconds)")
    p.add_argument("--parts", default="mixed,sweep,merge,alora")
    p.add_argument("--adapters", default="1,4,16,64", help="numbers of adapters for the sweep")
    p.add_argument("--alpha", type=float, default=1.0, help="power-law popularity exponent")
    p.add_argument("--rate", type=float, default=math.inf, help="requests/s (Poisson); inf = all at once")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--in-len", type=int, default=64)
    p.add_argument("--out-len", type=int, default=32)
    p.add_argument("--ranks", default="8,16,32", help="rank mix of the sweep's adapters (cycled)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sweep-repeats", type=int, default=2)
    p.add_argument("--alora-repeats", type=int, default=5)
    p.add_argument("--output", default=str(RESULTS / "serve.json"))
    p.add_argument("--screenshot", default=None, help="only capture the try-it page on SmolLM2 to this PNG")
    p.add_argument("--render", action="store_true", help="only rewrite the BENCHMARKS.md section from --output")
    p.add_argument(
        "--merge-sweep",
        default=None,
        help="with --render: take the sweep from this results file (a hold of its own)",
    )
    args = p.parse_args()
    if args.render:
        import json

        res = json.loads(Path(args.output).read_text())
        if args.merge_sweep:
            other = json.loads(Path(args.merge_sweep).read_text())
            res["sweep"] = other["sweep"]
            keys = ("started", "ended", "wall_s", "load_avg", "load_avg_end", "uptime_start", "uptime_end", "args")
            res["sweep_run"] = {k: other.get(k) for k in keys} | {"git": other["machine"]["git"]}
            write_json(Path(args.output), res)
        update_markdown_section("serve", markdown(res))
        return
    if args.screenshot:
        screenshot(Path(args.screenshot))
        return
    if args.smoke:
        args.requests, args.in_len, args.out_len, args.repeats, args.sweep_repeats = 16, 16, 8, 1, 1
        args.alora_repeats = 1
        args.adapters = "1,4"
    warnings.filterwarnings("ignore")
    import json
    import os

    t0 = time.time()
    res: dict[str, Any] = {
        "started": time.strftime("%H:%M", time.gmtime(t0)),
        "uptime_start": _uptime(),
        "machine": machine_info(),
        "load_avg": round(os.getloadavg()[0], 1),
        "args": {
            k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in vars(args).items()
        },
        "torch_threads": torch.get_num_threads(),
    }
    res["machine"]["threads"] = torch.get_num_threads()
    root = Path(tempfile.mkdtemp(prefix="lorafam-serve-bench-"))
    base, tok, model_dir = base_model(args)
    for part in args.parts.split(","):
        print(f"== {part}", flush=True)
        res[part] = {"mixed": part_mixed, "sweep": part_sweep, "merge": part_merge, "alora": part_alora}[part](
            args, base, tok, model_dir, root
        )
        res["load_avg_end"] = round(os.getloadavg()[0], 1)
        res["ended"], res["wall_s"] = time.strftime("%H:%M", time.gmtime()), time.time() - t0
        res["uptime_end"] = _uptime()
        if not args.smoke:
            write_json(Path(args.output), res)
    if not args.smoke:
        update_markdown_section("serve", markdown(res))
    else:
        print(markdown(res))


if __name__ == "__main__":
    main()
