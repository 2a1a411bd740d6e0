"""Helpers of ``python -m benchmarks.serve``: the base, random adapters, prompts, one timed batch, interleaving."""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

import lorafam as lf
from lorafam.serve.batching import Engine, GenRequest

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
INVOCATION = [1, 520, 9531, 198]


# ---------------------------------------------------------------------------------------------------------------
def base_model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    if args.smoke:
        from tests.train_support import make_tiny_model_dir

        d = make_tiny_model_dir(Path(tempfile.mkdtemp()))
        return lf.load_model(str(d)), lf.load_tokenizer(str(d)), str(d)
    return lf.load_model(), lf.load_tokenizer(), None


_SCRATCH: dict[str | None, Any] = {}


def save_random_adapter(model: Any, cfg: lf.AdapterConfig, out: Path, seed: int, name: str = "scratch") -> Path:
    """Attach ``cfg`` to ``model``, perturb every adapter tensor (std 0.02; magnitudes multiplicatively) so the
    adapter is not the identity, save it in PEFT's layout to ``out`` and detach it again (the benchmarks and the
    serve tests share this)."""
    lf.attach(model, cfg, name=name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p, role, _ in lf.core.inject.named_adapter_params(model):
            noise = torch.randn(p.shape, generator=g) * 0.02
            p.mul_(1 + noise) if role == "magnitude" else p.add_(noise)
    lf.save_adapter(model, out, name=name)
    lf.detach(model, name)
    return out


def write_adapter(model_dir: str | None, out: Path, cfg: lf.AdapterConfig, seed: int) -> Path:
    """A random (non-identity) adapter saved in PEFT's layout; one scratch model per base, adapters detached."""
    if model_dir not in _SCRATCH:
        _SCRATCH[model_dir] = lf.load_model(model_dir)
    return save_random_adapter(_SCRATCH[model_dir], cfg, out, seed)


def prompt_ids(tok: Any, n: int, salt: int) -> list[int]:
    words = ["river", "stone", "lamp", "cloud", "garden", "window", "engine", "letter", "forest", "bridge"]
    rng = random.Random(salt)
    ids: list[int] = []
    while len(ids) < n:
        ids += tok(" " + " ".join(rng.choice(words) for _ in range(16)), add_special_tokens=False).input_ids
    return ids[:n]


def run_batch(engine: Engine, models: list[str], prompts: list[list[int]], out_len: int) -> float:
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


def interleave(contenders: dict[str, Any], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(0 if warmup else 1, repeats + 1):  # round 0: warm-up
        for name in names if r % 2 == 0 else names[::-1]:
            v = contenders[name]()
            if r:
                out[name].append(v)
                print(f"  round {r}/{repeats}  {name:<24} {v:10.2f}", flush=True)
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(num: list[float], den: list[float]) -> list[float]:
    """[lowest, highest] of the per-round paired ratios."""
    ratios = sorted(a / b for a, b in zip(num, den))
    return [ratios[0], ratios[-1]]


def paired(num: list[float], den: list[float]) -> float:
    """Median of the per-round ratios (each round ran both contenders back to back)."""
    return statistics.median(a / b for a, b in zip(num, den))
