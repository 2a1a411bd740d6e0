"""Two inference-time fixes for short calls on top of a long cache (an aLoRA invocation after a cached history).

Measured on SmolLM2-135M, CPU, a 4-token call on a 1k-token cache (profile in ``docs/alora.md``):

1. transformers' SDPA path only uses PyTorch's native grouped-query attention (``enable_gqa``) when there is no
   mask; a multi-token call on a cache has a mask, so it materialises the repeated keys/values of every cached
   token in every layer (``repeat_kv``) — about a third of the call. :func:`gqa_sdpa_forward` passes the mask to
   SDPA with ``enable_gqa=True`` instead (same kernel, same numbers: checked bit-for-bit in the tests).
2. With ``logits_to_keep=1`` the last hidden state is a non-contiguous slice, and ``F.linear`` on it takes a
   batched-matmul path that is ~5x slower than the matrix-vector product of a one-token decode for the 49k-row
   head. A pre-hook on the output head makes its input contiguous.

3. A cache view that concatenates the shared prefix with the call's tokens copies the whole history's K/V in
   every layer on the call's first step (what ``DynamicLayer.update`` does). :class:`SharedPrefixLayer` keeps the
   call's own K/V apart instead, and :func:`gqa_sdpa_forward` attends to the read-only prefix and to the own
   tokens separately and merges the two softmax parts exactly (log-sum-exp weights): a call never copies, writes
   or re-materialises the shared history.

All of this applies only inside :func:`fast_inference`; the model's configuration is restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.cache_utils import DynamicLayer

ATTN_NAME = "lorafam_sdpa_gqa"
SPLIT_MAX_QUERIES = 64
"""Calls with more new tokens than this attend to the concatenated prefix + own K/V with SDPA instead."""
PREFIX_ATTR = "_lorafam_prefix"


class SharedPrefixLayer(DynamicLayer):
    """One layer of a cache view: the shared prefix K/V (read-only, never copied) + this call's own K/V.

    ``update`` grows and returns only the own part; the returned key tensor carries the prefix (attribute
    ``_lorafam_prefix``) so that :func:`gqa_sdpa_forward` can attend to both. Sizes reported to transformers'
    mask code count the prefix.
    """

    def __init__(self, prefix_keys: Tensor, prefix_values: Tensor):
        super().__init__()
        self.prefix = (prefix_keys, prefix_values)
        self.lazy_initialization(prefix_keys, prefix_values)

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        keys, values = super().update(key_states, value_states)
        setattr(keys, PREFIX_ATTR, self.prefix)
        return keys, values

    def get_seq_length(self) -> int:
        return self.prefix[0].shape[-2] + super().get_seq_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


def _part(query: Tensor, key: Tensor, value: Tensor, scale: float, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Softmax attention of ``query`` (B, Hkv, g·n, D) on one block of keys: (output, log-sum-exp), in float32.

    Unmasked CPU blocks (the long prefix) go through PyTorch's flash-attention CPU kernel, which returns the
    log-sum-exp as well (2.7x faster than the matmul formula on a 2k prefix); the rest use the formula.
    """
    if mask is None and query.device.type == "cpu" and query.dtype in (torch.float32, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, False, scale=scale
        )
        return out.float(), lse.float().unsqueeze(-1)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.matmul(torch.exp(scores - lse), value.float()), lse


def split_attention(
    query: Tensor, key: Tensor, value: Tensor, prefix: tuple[Tensor, Tensor], scale: float
) -> Tensor:
    """Causal attention of the n new queries on [prefix; own] without concatenating: (B, n, H, D).

    Every query sees the whole prefix; query i (the (own − n + i)-th own token) sees own tokens ≤ it. Grouped
    query heads are folded into the query axis (B, Hkv, g·n, D), so no key/value head is repeated.
    """
    batch, heads, n, dim = query.shape
    kv_heads, own = key.shape[1], key.shape[2]
    q = query.reshape(batch, kv_heads, heads // kv_heads * n, dim)
    o1, l1 = _part(q, prefix[0], prefix[1], scale, None)
    pos = torch.arange(n, device=query.device) + (own - n)
    causal = (torch.arange(own, device=query.device)[None, :] <= pos[:, None]).repeat(heads // kv_heads, 1)
    o2, l2 = _part(q, key, value, scale, causal)
    lse = torch.logaddexp(l1, l2)
    out = o1 * torch.exp(l1 - lse) + o2 * torch.exp(l2 - lse)
    return out.to(query.dtype).reshape(batch, heads, n, dim).transpose(1, 2).contiguous()


def gqa_sdpa_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' ``sdpa`` attention, except masked multi-query grouped attention runs with ``enable_gqa``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix = getattr(key, PREFIX_ATTR, None)
    if prefix is not None:
        if dropout == 0.0 and query.shape[2] <= SPLIT_MAX_QUERIES and kwargs.get("position_bias") is None:
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            return split_attention(query, key, value, prefix, scale), None
        key, value = torch.cat([prefix[0], key], dim=-2), torch.cat([prefix[1], value], dim=-2)
    groups = getattr(module, "num_key_value_groups", 1)
    plain = (
        groups == 1
        or attention_mask is None
        or query.shape[2] == 1
        or key.shape[-1] != value.shape[-1]
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
    )
    if plain:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    """Make ``ATTN_NAME`` a valid attention implementation (transformers' documented extension point)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTN_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_NAME, gqa_sdpa_forward)
        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], Tensor) else args


@contextlib.contextmanager
def fast_inference(model: nn.Module) -> Iterator[bool]:
    """Within the block: GQA-native masked SDPA (models on ``sdpa`` only) and a contiguous input to the head.

    Yields whether the attention function is ours, i.e. whether :class:`SharedPrefixLayer` views may be used.
    """
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switch = previous == "sdpa"
    head = model.get_output_embeddings()  # every transformers PreTrainedModel has it (None when there is no head)
    handle = head.register_forward_pre_hook(_contiguous_input) if head is not None else None
    try:
        if switch:
            _register()
            config._attn_implementation = ATTN_NAME
        yield switch
    finally:
        if switch:
            config._attn_implementation = previous
        if handle is not None:
            handle.remove()
