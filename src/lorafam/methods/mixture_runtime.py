"""Runtime of the mixture (``lorafam.methods.mixture``): routing state and hooks, balance loss, router statistics."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from lorafam.train.callbacks import Callback


class RoutingState:
    """Set by a forward hook on the decoder body: is this call "fresh" (empty KV cache), "cached", or unknown
    (None); the attention mask of a fresh call; which cache object it extends and from where."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.mask: Tensor | None = None  # (B, T) attention mask of a fresh call
        self.cache: Any = None  # the KV cache object of this call (None: no cache)
        self.start = 0  # tokens already in that cache before this call
        self.length = 0  # tokens this call adds
        # (adapter, probs, gates, end) of a fresh call that had no cache yet: the model makes one inside the call,
        # and the post hook files the gates under it (so a later call continuing that cache finds them)
        self.pending: list[tuple[Any, Tensor, Tensor, int]] = []


def _call_length(args: tuple, kwargs: dict) -> int:
    for x in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), args[0] if args else None):
        if isinstance(x, Tensor) and x.dim() >= 2:
            return int(x.shape[1])
    return 0


def install_routing_hooks(model: nn.Module, name: str, state: RoutingState) -> None:
    """Hooks telling the layers whether a call starts a sequence (empty KV cache) or extends one.

    They sit on the decoder body (``model.base_model``; the model itself when it has none), like aLoRA's: the
    top model calls the body with the same mask and cache, and the trainer's chunked loss and ``evaluate()`` call
    the body directly, so training and inference route on the same information (padding excluded).
    """

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("past_key_values")  # transformers < 5.x spelling
        if cache is None:
            cache = kwargs.get("cache")
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        state.phase = "cached" if past > 0 else "fresh"
        mask = kwargs.get("attention_mask")
        state.mask = mask if past == 0 and isinstance(mask, Tensor) and mask.dim() == 2 else None
        state.cache = cache
        state.start, state.length = past, _call_length(args, kwargs)

    def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        made = getattr(output, "past_key_values", None)
        for ad, probs, gates, end in state.pending:
            ad.remember_sequence(made, probs, gates, end)
        state.phase, state.mask, state.cache, state.pending = None, None, None, []

    body = getattr(model, "base_model", None)
    target = body if isinstance(body, nn.Module) and body is not model else model
    hooks = getattr(model, "lorafam_mixture_hooks", {})
    hooks[name] = (
        target.register_forward_pre_hook(pre, with_kwargs=True),
        target.register_forward_hook(post, with_kwargs=True),
    )
    model.lorafam_mixture_hooks = hooks


def mixtures(model: nn.Module, name: str) -> list[tuple[str, Any]]:
    """(module path, MixtureAdapter) for every layer carrying mixture adapter ``name``."""
    from lorafam.core.inject import adapted_layers
    from lorafam.methods.mixture import MixtureAdapter

    return [
        (path, ad) for path, layer in adapted_layers(model) for k, ad in layer.adapters.items() if k == name
        if isinstance(ad, MixtureAdapter)
    ]  # fmt: skip


def router_stats(model: nn.Module, name: str = "default") -> dict[str, list[float]]:
    """Module path → mean gate per expert over all training tokens (or sequences) seen so far (saved, reloadable)."""
    return {
        path: (ad.gate_sum / ad.gate_count.clamp_min(1)).tolist() for path, ad in mixtures(model, name)
    }  # fmt: skip


class MixtureCallback(Callback):
    """Adds the balance loss and logs the mean gate per expert (overall and per transformer block)."""

    def __init__(self, model: nn.Module, name: str, config: Any):
        self.name = f"mixture:{name}"
        self.adapter_name = name
        self.weight = float(config.balance_loss_weight)
        self.labels = [f"e{i}_{type(c).method}" for i, c in enumerate(config.experts)]
        self.mixes = mixtures(model, name)
        self.last_balance = float("nan")

    def extra_loss(self, model: nn.Module) -> Tensor | None:
        terms = [ad._aux for _, ad in self.mixes if ad._aux is not None]
        for _, ad in self.mixes:
            ad._aux = None
        if not terms:
            return None
        balance = torch.stack(terms).mean()
        self.last_balance = float(balance.detach())
        return self.weight * balance if self.weight > 0 else None

    def logs(self) -> dict[str, float]:
        out: dict[str, float] = {f"router/{self.adapter_name}/balance": self.last_balance}
        n = len(self.labels)
        total = torch.zeros(n + 1, dtype=torch.float64)
        blocks: dict[str, Tensor] = {}
        for path, ad in self.mixes:
            total += ad.window
            m = re.search(r"\.(\d+)\.", f".{path}.")
            key = f"L{int(m.group(1)):02d}" if m else path
            blocks[key] = blocks.get(key, torch.zeros(n + 1, dtype=torch.float64)) + ad.window
            ad.window.zero_()
        if total[n] == 0:
            return out
        for i, label in enumerate(self.labels):
            out[f"router/{self.adapter_name}/{label}"] = float(total[i] / total[n])
        for key, w in sorted(blocks.items()):
            for i in range(n):
                out[f"router/{self.adapter_name}/{key}/e{i}"] = float(w[i] / w[n].clamp_min(1))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"last_balance": self.last_balance}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_balance = float(state.get("last_balance", float("nan")))
