"""Helpers for the server tests: adapter folders of every member on a tiny model, a live server, raw HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import lorafam as lf

INVOCATION = [1, 520, 9531, 198]  # "<|im_start|>assistant\n" in SmolLM2's tokenizer (the tiny models use it)


def member_configs() -> dict[str, lf.AdapterConfig]:
    """One served adapter per member (LoRA at two ranks)."""
    return {
        "lora-r4": lf.LoraConfig(rank=4, alpha=8, targets="all-linear"),
        "lora-r64": lf.LoraConfig(rank=64, alpha=64, targets="all-linear"),
        "rslora": lf.LoraConfig(rank=8, alpha=8, targets="all-linear", use_rslora=True),
        "dora": lf.DoraConfig(rank=4, alpha=8, targets="all-linear"),
        "adalora": lf.AdaLoraConfig(rank=6, alpha=8, targets="all-linear"),
        "quantum": lf.QuantumConfig(rank=4, alpha=8, targets="all-linear"),
        "alora": lf.ALoraConfig(rank=4, alpha=8, targets="all-linear", invocation_tokens=INVOCATION),
        "mopeft": lf.MixtureConfig(experts=["lora", "dora"], rank=4, alpha=8, targets="all-linear"),
    }


def write_adapter(model_dir: Path, out: Path, config: lf.AdapterConfig, seed: int, std: float = 0.3) -> Path:
    """Attach ``config`` to the tiny model, give it random (non-identity) weights, save it in PEFT's layout."""
    model = lf.load_model(str(model_dir))
    lf.attach(model, config, name="default")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p, role, _ in lf.core.inject.named_adapter_params(model):
            noise = torch.randn(p.shape, generator=g) * std
            p.mul_(1 + noise) if role == "magnitude" else p.add_(noise)
    if isinstance(config, lf.AdaLoraConfig):  # mask two triplets of one layer: served at its reduced rank
        layer = next(layer for _, layer in lf.core.inject.adapted_layers(model))
        with torch.no_grad():
            layer.adapters["default"].lora_E[:2] = 0
    lf.save_adapter(model, out)
    return out


def reference(model_dir: Path, adapter: Path | None, name: str | None, prompt: list[int], n: int) -> list[int]:
    """``lf.generate`` greedy ids for one adapter on a fresh model (eos ignored)."""
    model = lf.load_model(str(model_dir))
    if adapter is not None:
        lf.load_adapter(model, adapter, name=name)
    out = lf.generate(model, None, prompt, adapter=name if adapter else None, max_new_tokens=n, eos_token_id=[])
    return out.new_ids


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def raw(
    url: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None, method: str | None = None
) -> Raw:
    """One HTTP request with the standard library (for what the openai client cannot send: bad JSON, raw SSE)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return Raw(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read().decode())
    except urllib.error.HTTPError as exc:
        return Raw(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode())


def metric(text: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)
