"""Serving many adapters: lorafam's batched engine vs one adapter, vs a PEFT server that batches per adapter.

    flock /tmp/lorafam-bench.lock nice python -m benchmarks.serve          # SmolLM2-135M, all four parts
    python -m benchmarks.serve --smoke                                      # tiny random Llama, seconds
    python -m benchmarks.serve --parts sweep --adapters 1,4,16,64 --alpha 1.0 --rate 8 --in-len 64 --out-len 32

Workload knobs follow S-LoRA's benchmark suite (Sheng et al., "S-LoRA: Serving Thousands of Concurrent LoRA
Adapters", MLSys 2024, arXiv 2311.03285): the number of adapters, a power-law popularity (adapter i is asked for with
probability ∝ (i+1)^−alpha), the request rate (Poisson arrivals; ``inf`` = all at once, i.e. offline throughput),
input/output lengths and the rank mix. All adapters are random (non-identity) weights on SmolLM2-135M-Instruct in
fp32; outputs are forced to ``out-len`` tokens (EOS ignored) so every contender does the same work.

Parts (timed interleaved in one process: every repeat runs each contender once, medians reported):

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
import random
import statistics
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import lorafam as lf
from benchmarks.common import RESULTS, machine_info, md_table, update_markdown_section, write_json
from lorafam.serve.batching import Engine, EngineConfig, GenRequest

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
INVOCATION = [1, 520, 9531, 198]


# ---------------------------------------------------------------------------------------------------------------
def _base(args: argparse.Namespace) -> tuple[Any, Any, str]:
    if args.smoke:
        from tests.train_support import make_tiny_model_dir

        d = make_tiny_model_dir(Path(tempfile.mkdtemp()))
        return lf.load_model(str(d)), lf.load_tokenizer(str(d)), str(d)
    return lf.load_model(), lf.load_tokenizer(), None


_SCRATCH: dict[str | None, Any] = {}


def _write(model_dir: str | None, out: Path, cfg: lf.AdapterConfig, seed: int) -> Path:
    """A random (non-identity) adapter saved in PEFT's layout; one scratch model per base, adapters detached."""
    if model_dir not in _SCRATCH:
        _SCRATCH[model_dir] = lf.load_model(model_dir)
    model = _SCRATCH[model_dir]
    lf.attach(model, cfg, name="scratch")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p, role, _ in lf.core.inject.named_adapter_params(model):
            noise = torch.randn(p.shape, generator=g) * 0.02
            p.mul_(1 + noise) if role == "magnitude" else p.add_(noise)
    lf.save_adapter(model, out, name="scratch")
    lf.detach(model, "scratch")
    return out


def _prompt(tok: Any, n: int, salt: int) -> list[int]:
    words = ["river", "stone", "lamp", "cloud", "garden", "window", "engine", "letter", "forest", "bridge"]
    rng = random.Random(salt)
    ids: list[int] = []
    while len(ids) < n:
        ids += tok(" " + " ".join(rng.choice(words) for _ in range(16)), add_special_tokens=False).input_ids
    return ids[:n]


def _run_batch(engine: Engine, models: list[str], prompts: list[list[int]], out_len: int) -> float:
    """Submit all, release at once; return decode tokens/s over the steps where every row was running."""
    engine.step_log.clear()
    threads, results = [], []
    with engine.hold():
        for m, p in zip(models, prompts):
            req = GenRequest(model=m, prompt_ids=p, max_tokens=out_len, temperature=0, ignore_eos=True)
            t = threading.Thread(target=lambda r=req: results.append(engine.generate(r)))
            t.start()
            threads.append(t)
        while engine._waiting.qsize() < len(models):
            time.sleep(0.005)
    for t in threads:
        t.join()
    full = [(n, dt) for n, _, dt in engine.step_log if n == len(models)]
    return sum(n for n, _ in full) / sum(dt for _, dt in full)


def _interleave(contenders: dict[str, Any], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(0 if warmup else 1, repeats + 1):  # round 0: warm-up
        for name in names if r % 2 == 0 else names[::-1]:
            v = contenders[name]()
            if r:
                out[name].append(v)
                print(f"  round {r}/{repeats}  {name:<24} {v:10.2f}", flush=True)
    return out


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _spread(num: list[float], den: list[float]) -> list[float]:
    ratios = sorted(a / b for a, b in zip(num, den))
    return [ratios[0], ratios[-1]]


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
        engine.load(name, _write(model_dir, root / name, cfg, i), check_base=False)
    prompts = [_prompt(tok, args.in_len, i) + INVOCATION for i in range(rows)]
    mixed = list(cfgs)
    times = _interleave(
        {
            "mixed_8_adapters": lambda: _run_batch(engine, mixed, prompts, args.out_len),
            "one_adapter": lambda: _run_batch(engine, ["lora-r16"] * rows, prompts, args.out_len),
            "base": lambda: _run_batch(engine, ["base"] * rows, prompts, args.out_len),
        },
        args.repeats,
    )
    engine.close()
    out: dict[str, Any] = {
        "rows": rows,
        "adapters": {n: {"method": c.method, "rank": c.rank} for n, c in cfgs.items()},
        "tokens_per_s": {k: _med(v) for k, v in times.items()},
        "raw_tokens_per_s": times,
        "ratio_mixed_over_one": _med(times["mixed_8_adapters"]) / _med(times["one_adapter"]),
        "ratio_spread": _spread(times["mixed_8_adapters"], times["one_adapter"]),
        "ratio_one_over_base": _med(times["one_adapter"]) / _med(times["base"]),
    }
    out["peft"] = _peft_mixed(args, model_dir, tok, root, prompts)
    return out


def _peft_mixed(
    args: argparse.Namespace, model_dir: str | None, tok: Any, root: Path, prompts: list[list[int]]
) -> dict:
    """PEFT's mixed-adapter batch (``adapter_names``) over 8 LoRA adapters vs one adapter, generate() tokens/s."""
    from peft import PeftModel

    ranks = [8, 16, 32, 16, 16, 12, 16, 16]
    names = [f"peft-{i}" for i in range(8)]
    for i, (n, r) in enumerate(zip(names, ranks)):
        _write(model_dir, root / n, lf.LoraConfig(rank=r, alpha=2 * r, targets="all-linear"), 100 + i)
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

    times = _interleave(
        {"peft_mixed_8": lambda: run(names), "peft_one": lambda: run([names[1]] * 8)}, args.repeats
    )
    return {
        "tokens_per_s": {k: _med(v) for k, v in times.items()},
        "raw_tokens_per_s": times,
        "ratio_mixed_over_one": _med(times["peft_mixed_8"]) / _med(times["peft_one"]),
        "note": "generate() tokens/s incl. an in-len prefill; 8 LoRA adapters (PEFT refuses DoRA with adapter_names)",
    }


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
        "ttft_s": _med([d["ttft_s"] for d in done]),
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
    return {"tokens_per_s": len(load) * out_len / wall, "wall_s": wall, "latency_s": _med(first)}


def part_sweep(args: argparse.Namespace, base: Any, tok: Any, model_dir: str | None, root: Path) -> dict[str, Any]:
    from peft import PeftModel

    ranks = [int(r) for r in args.ranks.split(",")]
    counts = [int(n) for n in args.adapters.split(",")]
    names = [f"s{i}-r{ranks[i % len(ranks)]}" for i in range(max(counts))]
    for i, n in enumerate(names):
        r = ranks[i % len(ranks)]
        _write(model_dir, root / n, lf.LoraConfig(rank=r, alpha=2 * r, targets=ATTN), 200 + i)
    engine = Engine(base, tok, base_id="base", config=EngineConfig(max_batch=32, cache_tokens=0, merge_hot=False))
    engine.start()
    for n in names:
        engine.load(n, root / n, check_base=False)
    peft = PeftModel.from_pretrained(lf.load_model(model_dir), str(root / names[0]), adapter_name=names[0]).eval()
    for n in names[1:]:
        peft.load_adapter(str(root / n), adapter_name=n)
    prompts = [_prompt(tok, args.in_len, 1000 + i) for i in range(args.requests)]
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
            "ours_tokens_per_s": _med(ours),
            "peft_per_adapter_tokens_per_s": _med(theirs),
            "ratio_ours_over_peft": _med(ours) / _med(theirs),
            "ratio_spread": _spread(ours, theirs),
            "ours_median_ttft_s": _med([x["ttft_s"] for x in runs["ours"]]),
            "runs": runs,
        }
    engine.close()
    return out


# ---------------------------------------------------------------------------------------------------------------
def part_merge(args: argparse.Namespace, base: Any, tok: Any, model_dir: str | None, root: Path) -> dict[str, Any]:
    path = _write(model_dir, root / "hot", lf.LoraConfig(rank=16, alpha=32, targets="all-linear"), 7)
    unmerged = Engine(base, tok, base_id="base", config=EngineConfig(cache_tokens=0, merge_hot=False))
    unmerged.load("hot", path, check_base=False)
    unmerged.start()
    prompts = [_prompt(tok, args.in_len, 300 + i) for i in range(8)]

    def merged_run() -> float:
        unmerged.cfg.merge_hot, unmerged.cfg.merge_after = True, 1
        try:
            return _run_batch(unmerged, ["hot"] * 8, prompts, args.out_len)
        finally:
            unmerged.cfg.merge_hot = False
            unmerged._call(unmerged._unmerge)

    times = _interleave(
        {"unmerged": lambda: _run_batch(unmerged, ["hot"] * 8, prompts, args.out_len), "merged": merged_run},
        args.repeats,
    )
    merges = unmerged.stats["merges"]
    unmerged.close()
    return {
        "tokens_per_s": {k: _med(v) for k, v in times.items()},
        "raw_tokens_per_s": times,
        "ratio_unmerged_over_merged": _med(times["unmerged"]) / _med(times["merged"]),
        "ratio_spread": _spread(times["unmerged"], times["merged"]),
        "merges": merges,
    }


def part_alora(args: argparse.Namespace, base: Any, tok: Any, model_dir: str | None, root: Path) -> dict[str, Any]:
    path = _write(
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
        history = _prompt(tok, n, 400 + n)
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
        times = _interleave({"reuse": with_reuse, "no_reuse": without}, args.alora_repeats, warmup=False)
        out[str(n)] = {
            "ttft_s": {k: _med(v) for k, v in times.items()},
            "raw_ttft_s": times,
            "speedup": _med(times["no_reuse"]) / _med(times["reuse"]),
        }
    engine.close()
    return out


# ---------------------------------------------------------------------------------------------------------------
def _markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "## Serving many adapters (`lorafam serve`'s engine)",
        "",
        f"`python -m benchmarks.serve` on {m.get('cpu', '?')}, torch threads: {m.get('threads', '?')}, load average "
        f"{res['load_avg']} at the start (a shared machine: read the ratios, which are medians of interleaved runs). "
        f"SmolLM2-135M-Instruct fp32, random adapters, in {res['args']['in_len']} / out {res['args']['out_len']} "
        "tokens, EOS ignored. Workload knobs as in S-LoRA (arXiv 2311.03285).",
        "",
    ]
    if res.get("note"):
        lines += [f"*{res['note']}*", ""]
    missing = [p for p in ("mixed", "sweep", "merge", "alora") if p not in res]
    if missing:
        lines += [
            f"Not measured in this run: {', '.join(missing)} — run `python -m benchmarks.serve --parts "
            f"{','.join(missing)}` on a quiet machine (the tiny-model `--smoke` run exercises every part).",
            "",
        ]
    if "mixed" in res:
        x = res["mixed"]
        t = x["tokens_per_s"]
        lines += [
            "**Mixed batch.** 8 rows, each on a different adapter (LoRA r=8/16/32, rsLoRA, DoRA, AdaLoRA, Quantum-PEFT, "
            "aLoRA) vs 8 rows of one LoRA r=16, decode tokens/s:",
            "",
            md_table(
                ["batch of 8", "tokens/s", "ratio"],
                [
                    [
                        "8 different adapters (ours)",
                        t["mixed_8_adapters"],
                        f"{x['ratio_mixed_over_one']:.2f} (target ≥ 0.8; spread {x['ratio_spread'][0]:.2f}–{x['ratio_spread'][1]:.2f})",
                    ],
                    ["one adapter (ours, unmerged)", t["one_adapter"], "1"],
                    ["base model (ours)", t["base"], f"one adapter / base {x['ratio_one_over_base']:.2f}"],
                    [
                        "8 LoRA adapters (PEFT adapter_names)",
                        x["peft"]["tokens_per_s"]["peft_mixed_8"],
                        f"{x['peft']['ratio_mixed_over_one']:.2f}",
                    ],
                    ["one adapter (PEFT)", x["peft"]["tokens_per_s"]["peft_one"], "1"],
                ],
            ),
            "",
        ]
    if "sweep" in res:
        rows = [
            [
                n,
                v["adapters_used"],
                v["ours_tokens_per_s"],
                v["peft_per_adapter_tokens_per_s"],
                f"{v['ratio_ours_over_peft']:.2f} ({v['ratio_spread'][0]:.2f}–{v['ratio_spread'][1]:.2f})",
            ]
            for n, v in res["sweep"].items()
        ]
        a = res["args"]
        lines += [
            f"**Many adapters.** {a['requests']} requests, popularity ∝ (i+1)^−{a['alpha']}, rate {a['rate']} req/s, "
            f"ranks {a['ranks']} on q,k,v,o; ours (continuous batching, ≤ 32 rows of any adapters per step) vs a "
            "PEFT server that batches per adapter (≤ 32 rows of one adapter per `generate`):",
            "",
            md_table(["adapters", "used", "ours tok/s", "PEFT per-adapter tok/s", "ours / PEFT"], rows),
            "",
        ]
    if "merge" in res:
        x = res["merge"]
        lines += [
            f"**One hot adapter.** 8 rows of one LoRA r=16: unmerged {x['tokens_per_s']['unmerged']:.1f} tok/s, "
            f"merged {x['tokens_per_s']['merged']:.1f} tok/s — unmerged / merged = {x['ratio_unmerged_over_merged']:.2f} "
            f"(spread {x['ratio_spread'][0]:.2f}–{x['ratio_spread'][1]:.2f}). The engine merges when all traffic is "
            "one mergeable adapter and swaps the original weights back (exact) when another is asked for.",
            "",
        ]
    if "alora" in res:
        rows = [
            [n, v["ttft_s"]["reuse"] * 1000, v["ttft_s"]["no_reuse"] * 1000, f"{v['speedup']:.1f}×"]
            for n, v in res["alora"].items()
        ]
        lines += [
            "**aLoRA after a base turn.** Time to first token of an aLoRA call on the history the base model just "
            "produced, through the engine's shared prefix cache vs with the cache cleared:",
            "",
            md_table(["history tokens", "TTFT with reuse (ms)", "TTFT without (ms)", "speed-up"], rows),
            "",
        ]
    return "\n".join(lines)


def screenshot(path: Path) -> None:
    """The try-it page on SmolLM2 (a lightly perturbed LoRA beside the base), captured in headless Chromium."""
    import shutil

    from playwright.sync_api import sync_playwright

    from lorafam.serve.app import ServerThread, create_app
    from lorafam.serve.metrics import Metrics

    root = Path(tempfile.mkdtemp())
    model, tok = lf.load_model(), lf.load_tokenizer()
    lf.attach(model, lf.LoraConfig(rank=16, alpha=32, targets="all-linear"), name="x")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p, _, _ in lf.core.inject.named_adapter_params(model):
            p.add_(torch.randn(p.shape, generator=g) * 0.004)
    lf.save_adapter(model, root / "tutor-lora", name="x")
    lf.detach(model, "x")
    engine = Engine(model, tok, base_id="SmolLM2-135M-Instruct", metrics=Metrics())
    engine.load("tutor-lora", root / "tutor-lora")
    engine.start()
    server = ServerThread(create_app(engine)).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 640})
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelectorAll('#model-a option').length >= 2")
            page.select_option("#model-a", "tutor-lora")
            page.check("#side")
            page.select_option("#model-b", "SmolLM2-135M-Instruct")
            page.fill("#max-tokens", "40")
            for turn, text in enumerate(["What is the capital of France?", "And of Italy?"], start=1):
                page.fill("#input", text)
                page.click("#send")
                page.wait_for_function(
                    f"document.querySelectorAll('.stats[data-tokens]').length == {2 * turn}", timeout=600_000
                )
            page.screenshot(path=str(path))
            browser.close()
    finally:
        server.stop()
        engine.close()
    print(f"wrote {path}")


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
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sweep-repeats", type=int, default=2)
    p.add_argument("--alora-repeats", type=int, default=3)
    p.add_argument("--output", default=str(RESULTS / "serve.json"))
    p.add_argument("--screenshot", default=None, help="only capture the try-it page on SmolLM2 to this PNG")
    p.add_argument("--render", action="store_true", help="only rewrite the BENCHMARKS.md section from --output")
    args = p.parse_args()
    if args.render:
        import json

        update_markdown_section("serve", _markdown(json.loads(Path(args.output).read_text())))
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

    previous = json.loads(Path(args.output).read_text()) if Path(args.output).exists() and not args.smoke else {}
    res: dict[str, Any] = {
        **previous,
        "machine": machine_info(),
        "load_avg": round(os.getloadavg()[0], 1),
        "args": {
            k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in vars(args).items()
        },
        "torch_threads": torch.get_num_threads(),
    }
    res["machine"]["threads"] = torch.get_num_threads()
    root = Path(tempfile.mkdtemp(prefix="lorafam-serve-bench-"))
    base, tok, model_dir = _base(args)
    for part in args.parts.split(","):
        print(f"== {part}", flush=True)
        res[part] = {"mixed": part_mixed, "sweep": part_sweep, "merge": part_merge, "alora": part_alora}[part](
            args, base, tok, model_dir, root
        )
        res["load_avg_end"] = round(os.getloadavg()[0], 1)
        if not args.smoke:
            write_json(Path(args.output), res)
    if not args.smoke:
        update_markdown_section("serve", _markdown(res))
    else:
        print(_markdown(res))


if __name__ == "__main__":
    main()
