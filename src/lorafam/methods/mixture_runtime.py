"""Runtime of the mixture (``lorafam.methods.mixture``): the routing state and the model-level hooks that set it."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lorafam.core.record import entry as record_entry


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
    entry = record_entry(model, name)
    entry.handles.append(target.register_forward_pre_hook(pre, with_kwargs=True))  # removed on detach
    entry.handles.append(target.register_forward_hook(post, with_kwargs=True))
    entry.state["routing"] = state
