"""Helpers for the trainer/data/CLI tests: a tiny Llama saved as a local model folder, small datasets."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

WORDS = [
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "sun",
    "moon",
    "tree",
    "lake",
    "hill",
    "rock",
    "fish",
    "bird",
    "star",
    "rain",
    "snow",
]


def make_tiny_model_dir(root: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny Llama (hidden 32, 2 layers) with the default model's tokenizer."""
    import lorafam as lf

    tok = lf.load_tokenizer()
    model = lf.tiny_llama(
        seed=seed, vocab_size=len(tok), hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64
    )
    out = root / "tiny-llama"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def reverse_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, 3)
        out.append({"instruction": "Reverse:", "input": " ".join(words), "output": " ".join(reversed(words))})
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(path: Path, **keys: Any) -> Path:
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


def base_config(model_dir: Path, data: Path, out: Path, **extra: Any) -> dict[str, Any]:
    """A fast tiny-model training config (override anything through ``extra``)."""
    cfg: dict[str, Any] = {
        "model_name_or_path": str(model_dir),
        "dataset": str(data),
        "lora_rank": 4,
        "lora_alpha": 8,
        "cutoff_len": 64,
        "per_device_train_batch_size": 4,
        "learning_rate": 5e-3,
        "max_steps": 6,
        "logging_steps": 1,
        "save_steps": 0,
        "output_dir": str(out),
        "disable_progress": True,
        "plot_loss": False,
        "seed": 0,
        "num_threads": 1,
    }
    cfg.update(extra)
    return cfg
