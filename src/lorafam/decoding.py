"""Batched decoding of many prompts with transformers' ``generate``: left padding, one call per batch, each row cut
before its first end token. One implementation for everything that decodes a list of prompts (``lorafam generate``
/ ``eval`` / ``quickstart`` through ``commands._generation.generate_batch``, the arena's answers).

Also :func:`kv_cache_view`, the one way the arena's shared prompt prefix and ``lorafam serve``'s prefix cache hand a
computed key/value prefix to a new forward. A leaf module: it imports only torch and transformers' cache classes.
(``lorafam serve``'s engine decodes differently — continuous batching over
per-row key/value slots with a different adapter per row — see :mod:`lorafam.serve.batching`.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["greedy_batch", "kv_cache_view", "left_pad"]


def kv_cache_view(
    keys: Iterable[Tensor], values: Iterable[Tensor], upto: int | None = None, rows: int = 1
) -> DynamicCache:
    """A new ``DynamicCache`` over per-layer (1, kv_heads, T, head_dim) keys and values: their first ``upto``
    positions (all by default), expanded to ``rows`` rows, as views (no copy). The first update of a layer
    concatenates the prefix with the new positions into a new tensor, so the given tensors are never written
    and one prefix serves any number of caches."""
    view = DynamicCache()
    for k, v in zip(keys, values, strict=True):
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k[:, :, :upto].expand(rows, -1, -1, -1), v[:, :, :upto].expand(rows, -1, -1, -1)
        view.layers.append(layer)
    return view


def left_pad(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of token-id prompts, padded on the left to the longest."""
    if not prompts:
        raise ValueError("left_pad: no prompts")
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, length - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, length - len(p) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _cut(row: list[int], stop: set[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in stop:
            return row[:i]
    return row


@torch.no_grad()
def greedy_batch(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    pad_id: int,
    max_new_tokens: int,
    eos_ids: int | Iterable[int] | None = None,
    batch_size: int = 16,
    **generate_kwargs: Any,
) -> list[list[int]]:
    """The new token ids of each prompt (greedy unless ``generate_kwargs`` ask to sample), before its end token.

    Args:
        model: a transformers causal LM (with or without lorafam adapters).
        prompts: token ids, one list per prompt (any lengths; batches are left-padded with ``pad_id``).
        pad_id: the padding token id (also given to ``generate`` as ``pad_token_id``).
        max_new_tokens: the most tokens generated per prompt.
        eos_ids: end token id(s): generation stops there and the row is cut before it; None: the model's
            ``generation_config.eos_token_id``.
        batch_size: prompts per ``generate`` call.
        generate_kwargs: more ``generate`` arguments (``do_sample``, ``temperature``, ``stop_strings`` ...).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if eos_ids is None:
        eos_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids or [])
    if stop:
        generate_kwargs.setdefault("eos_token_id", sorted(stop))
    generate_kwargs.setdefault("do_sample", False)
    device = next(model.parameters()).device
    outs: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        enc = {k: v.to(device) for k, v in left_pad(prompts[i : i + batch_size], pad_id).items()}
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad_id, **generate_kwargs)
        outs += [_cut(row, stop) for row in gen[:, enc["input_ids"].shape[1] :].tolist()]
    return outs
