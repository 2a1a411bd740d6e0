"""The ``sweep`` part of ``python -m benchmarks.serve``: S-LoRA's workload at 1/4/16/64 adapters, lorafam's engine
(continuous batching, mixed adapters per step) vs a PEFT server that batches per adapter."""

from __future__ import annotations

import argparse
import math
import random
import threading
import time
from pathlib import Path
from typing import Any

import torch

import lorafam as lf
from benchmarks.serve_common import ATTN, med, paired, prompt_ids, spread, write_adapter
from lorafam.serve.batching import Engine, EngineConfig, GenRequest


# ---------------------------------------------------------------------------------------------------------------
def _workload(args: argparse.Namespace, n_adapters: int, seed: int) -> list[tuple[float, int]]:
    """(arrival time s, adapter index) per request: power-law popularity, Poisson arrivals (rate inf: all at 0)."""
    rng = random.Random(seed)
    weights = [(i + 1) ** -args.alpha for i in range(n_adapters)]
    t, out = 0.0, []
    for _ in range(args.requests):
        out.append((t, rng.choices(range(n_adapters), weights)[0]))
        if math.isfinite(args.rate):
            t += rng.expovariate(args.rate)
    return out


def _ours(
    engine: Engine, names: list[str], load: list[tuple[float, int]], prompts: list[list[int]], out_len: int
) -> dict:
    done: list[dict] = []
    lock = threading.Lock()

    def on(req: GenRequest) -> None:
        result = engine.generate(req)
        with lock:
            done.append(result)

    threads = []
    t0 = time.perf_counter()
    for (at, a), p in zip(load, prompts):
        wait = at - (time.perf_counter() - t0)
        if wait > 0:
            time.sleep(wait)
        req = GenRequest(model=names[a], prompt_ids=p, max_tokens=out_len, temperature=0, ignore_eos=True)
        th = threading.Thread(target=on, args=(req,))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {
        "tokens_per_s": len(load) * out_len / wall,
        "wall_s": wall,
        "ttft_s": med([d["ttft_s"] for d in done]),
    }


def _peft_server(
    model: Any,
    names: list[str],
    load: list[tuple[float, int]],
    prompts: list[list[int]],
    out_len: int,
    max_batch: int,
) -> dict:
    """A PEFT server batching per adapter: serve the oldest waiting request's adapter, all its waiting requests."""
    t0 = time.perf_counter()
    waiting: list[int] = []
    nxt, done, first = 0, 0, []
    while done < len(load):
        now = time.perf_counter() - t0
        while nxt < len(load) and load[nxt][0] <= now:
            waiting.append(nxt)
            nxt += 1
        if not waiting:
            time.sleep(max(0.0, load[nxt][0] - now))
            continue
        adapter = load[waiting[0]][1]
        batch = [i for i in waiting if load[i][1] == adapter][:max_batch]
        waiting = [i for i in waiting if i not in batch]
        model.set_adapter(names[adapter])
        ids = torch.tensor([prompts[i] for i in batch])
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=out_len,
                min_new_tokens=out_len,
                do_sample=False,
                pad_token_id=0,
            )
        end = time.perf_counter() - t0
        first += [end - load[i][0] for i in batch]  # generate() returns at the end: TTFT = completion here
        done += len(batch)
    wall = time.perf_counter() - t0
    return {"tokens_per_s": len(load) * out_len / wall, "wall_s": wall, "latency_s": med(first)}


def part_sweep(args: argparse.Namespace, base: Any, tok: Any, model_dir: str | None, root: Path) -> dict[str, Any]:
    from peft import PeftModel

    ranks = [int(r) for r in args.ranks.split(",")]
    counts = [int(n) for n in args.adapters.split(",")]
    names = [f"s{i}-r{ranks[i % len(ranks)]}" for i in range(max(counts))]
    for i, n in enumerate(names):
        r = ranks[i % len(ranks)]
        write_adapter(model_dir, root / n, lf.LoraConfig(rank=r, alpha=2 * r, targets=ATTN), 200 + i)
    engine = Engine(base, tok, base_id="base", config=EngineConfig(max_batch=32, cache_tokens=0, merge_hot=False))
    engine.start()
    for n in names:
        engine.load(n, root / n, check_base=False)
    peft = PeftModel.from_pretrained(lf.load_model(model_dir), str(root / names[0]), adapter_name=names[0]).eval()
    for n in names[1:]:
        peft.load_adapter(str(root / n), adapter_name=n)
    prompts = [prompt_ids(tok, args.in_len, 1000 + i) for i in range(args.requests)]
    out: dict[str, Any] = {}
    for count in counts:
        load = _workload(args, count, seed=count)
        print(f"sweep: {count} adapters, {len(set(a for _, a in load))} used", flush=True)
        runs: dict[str, list[dict]] = {"ours": [], "peft_per_adapter": []}
        for r in range(args.sweep_repeats):
            order = ["ours", "peft_per_adapter"] if r % 2 == 0 else ["peft_per_adapter", "ours"]
            for name in order:
                if name == "ours":
                    res = _ours(engine, names, load, prompts, args.out_len)
                else:
                    res = _peft_server(peft, names, load, prompts, args.out_len, 32)
                runs[name].append(res)
                print(f"  {count:>3} adapters  {name:<18} {res['tokens_per_s']:8.1f} tok/s", flush=True)
        ours = [x["tokens_per_s"] for x in runs["ours"]]
        theirs = [x["tokens_per_s"] for x in runs["peft_per_adapter"]]
        out[str(count)] = {
            "adapters_used": len({a for _, a in load}),
            "ours_tokens_per_s": med(ours),
            "peft_per_adapter_tokens_per_s": med(theirs),
            "ratio_ours_over_peft": paired(ours, theirs),
            "ratio_spread": spread(ours, theirs),
            "ours_median_ttft_s": med([x["ttft_s"] for x in runs["ours"]]),
            "runs": runs,
        }
    engine.close()
    return out
