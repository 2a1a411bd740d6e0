"""Views on the base layer: the one place that knows the layouts (``nn.Linear`` (out, in), GPT-2's ``Conv1D``
(in, out), quantised layers that offer ``dequantize_weight``), for adapters, merging and export alike."""

from __future__ import annotations

import torch
from torch import Tensor, nn

try:  # GPT-2 style layers keep their weight as (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()  # type: ignore[assignment,misc]


def is_quantized(layer: nn.Module) -> bool:
    return hasattr(layer, "dequantize_weight")


def base_shape(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a supported base layer."""
    if isinstance(layer, nn.Linear) or is_quantized(layer):
        return layer.in_features, layer.out_features
    if Conv1D and isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    raise TypeError(f"unsupported base layer type {type(layer).__name__}")


def base_weight(layer: nn.Module) -> Tensor:
    """The base weight as an (out, in) tensor: a view for float layers, a dequantised copy otherwise."""
    if is_quantized(layer):
        return layer.dequantize_weight()
    if Conv1D and isinstance(layer, Conv1D):
        return layer.weight.T
    return layer.weight


def add_to_base_weight(layer: nn.Module, delta: Tensor) -> None:
    """W ← W + delta in place (delta in (out, in) layout).

    A quantised base that offers ``add_to_weight`` keeps a dense float copy beside its codes (never re-quantised);
    others refuse, since merging would re-quantise.
    """
    if is_quantized(layer) and hasattr(layer, "add_to_weight"):
        layer.add_to_weight(delta)
        return
    if is_quantized(layer):
        raise NotImplementedError(
            "cannot merge into a quantised (NF4) base in place: that would re-quantise the weights. "
            "Use lf.merge_and_unload(model), which returns a dequantised merged model."
        )
    with torch.no_grad():
        w = base_weight(layer)
        w.add_(delta.to(device=w.device, dtype=w.dtype))


def set_base_weight(layer: nn.Module, new: Tensor) -> None:
    """W ← new in place (new in (out, in) layout); quantised bases with ``set_weight`` keep a dense copy."""
    if is_quantized(layer) and hasattr(layer, "set_weight"):
        layer.set_weight(new)
        return
    if is_quantized(layer):
        raise NotImplementedError("cannot overwrite a quantised base weight in place")
    with torch.no_grad():
        w = base_weight(layer)
        w.copy_(new.to(device=w.device, dtype=w.dtype))


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted module ``path`` of ``model``, in place of what is there."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def base_bias(layer: nn.Module) -> Tensor | None:
    return getattr(layer, "bias", None)
