"""Two inference-time fixes for short calls on top of a long cache (an aLoRA invocation after a cached history).

Measured on SmolLM2-135M, CPU, a 4-token call on a 1k-token cache (profile in ``docs/alora.md``):

1. transformers' SDPA path only uses PyTorch's native grouped-query attention (``enable_gqa``) when there is no
   mask; a multi-token call on a cache has a mask, so it materialises the repeated keys/values of every cached
   token in every layer (``repeat_kv``) — about a third of the call. :func:`gqa_sdpa_forward` passes the mask to
   SDPA with ``enable_gqa=True`` instead (same kernel, same numbers: checked bit-for-bit in the tests).
2. With ``logits_to_keep=1`` the last hidden state is a non-contiguous slice, and ``F.linear`` on it takes a
   batched-matmul path that is ~5x slower than the matrix-vector product of a one-token decode for the 49k-row
   head. A pre-hook on the output head makes its input contiguous.

Both apply only inside :func:`fast_inference`; the model's configuration is restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

ATTN_NAME = "lorafam_sdpa_gqa"


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
def fast_inference(model: nn.Module) -> Iterator[None]:
    """Within the block: GQA-native masked SDPA (models on ``sdpa`` only) and a contiguous input to the head."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switch = previous == "sdpa"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    handle = head.register_forward_pre_hook(_contiguous_input) if head is not None else None
    try:
        if switch:
            _register()
            config._attn_implementation = ATTN_NAME
        yield
    finally:
        if switch:
            config._attn_implementation = previous
        if handle is not None:
            handle.remove()
