"""QLoRA's quantised base: frozen linear weights stored as NF4 with double-quantised scales.

"QLoRA: Efficient Finetuning of Quantized LLMs", Dettmers, Pagnoni, Holtzman, Zettlemoyer, NeurIPS 2023 —
https://arxiv.org/abs/2305.14314

Storage (paper §3, torchao's ``NF4Tensor`` layout):
    W (out, in) is flattened into blocks of 64; each block keeps one absmax scale c₁ and 4-bit indices into the
    16-value NormalFloat code book q (quantiles of N(0, 1) rescaled to [-1, 1]):
        idx = argmin_k | W_j / c₁ − q_k |,         W'_j = q[idx] · c₁'
    The scales are quantised again ("double quantisation"): c₁ − mean(c₁) in blocks of 256, symmetric int8.
    Bits per weight: 4 + 8/64 + (32/(64·256)) ≈ 4.125 (torchao; the paper's FP8 variant is 4.127).

Quantisation is done by torchao (``to_nf4``), a well-kept library; we keep its packed tensors as plain integer
buffers (the two fp32 scalars per scale block are stored as their raw int32 bits), so ``model.to(dtype)`` or
:func:`lorafam.core.precision.cast_frozen` can never silently dequantise the base. Dequantisation is our own
two-op kernel (one 8-byte lookup per stored byte giving its two fp32 codes, then one multiply by the scales),
bit-identical to torchao's ``get_original_weight`` and much faster on CPU (measured in ``benchmarks/qlora.py``).

The forward pass dequantises to ``compute_dtype`` and runs a dense matmul; the backward pass dequantises again
(nothing weight-sized is saved between the two), so the input gradient is exactly ``grad_out @ W'``. Gradients
never reach W' itself: the base is frozen, only adapters train.

Tensors whose size is not a multiple of 64 · 256 are padded (by repeating their own leading values, so the
scale statistics stay representative) before quantisation; the padding is dropped on dequantisation.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorafam.core.allocator import trim_heap

BLOCK_SIZE = 64
SCALER_BLOCK_SIZE = 256

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"compute_dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _to_nf4(flat: Tensor, block_size: int, scaler_block_size: int) -> Any:
    import logging

    # torchao logs two harmless "Failed to load" lines for optional C++ kernels on import
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    return to_nf4(flat, block_size, scaler_block_size)


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is NF4 (QLoRA's base). Behaves like ``nn.Linear`` in forward.

    Args:
        weight: the float weight in (out, in) layout (a GPT-2 ``Conv1D`` weight must be transposed first).
        bias: optional float bias (out,), kept in floating point and frozen.
        compute_dtype: dtype of the dequantised weight and the matmul ("float32", "bfloat16", "float16").
        source: "linear" or "conv1d" — which float module :meth:`to_float_linear` rebuilds.

    Attributes:
        in_features / out_features: the logical shape.
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None = None,
        compute_dtype: str | torch.dtype = "float32",
        source: str = "linear",
        block_size: int = BLOCK_SIZE,
        scaler_block_size: int = SCALER_BLOCK_SIZE,
    ):
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"NF4Linear needs a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
        if weight.is_meta:
            raise RuntimeError("cannot quantise a weight on the meta device; load the real weights first")
        if source not in ("linear", "conv1d"):
            raise ValueError(f"source must be 'linear' or 'conv1d', got {source!r}")
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.compute_dtype = _resolve_dtype(compute_dtype)
        self.source = source
        self.orig_dtype = weight.dtype
        self.block_size = block_size
        self.scaler_block_size = scaler_block_size
        flat = weight.detach().float().reshape(-1)
        numel = flat.numel()
        unit = block_size * scaler_block_size
        padded = math.ceil(numel / unit) * unit
        if padded != numel:  # repeat the tensor's own values so the scale statistics stay representative
            flat = torch.cat([flat, flat.repeat(math.ceil(padded / numel) - 1)[: padded - numel]])
        nf4 = _to_nf4(flat.contiguous(), block_size, scaler_block_size)
        self.numel = numel
        self.register_buffer("qdata", nf4.quantized_data.contiguous())  # uint8, two codes per byte
        self.register_buffer("qscalers", nf4.quantized_scalers.contiguous())  # int8, one per 64-block
        # fp32 per-256-block factor, scalar mean and the code book, stored as raw int32 bits (dtype-cast proof)
        self.register_buffer("scaler_factor_bits", nf4.quantization_factor.float().contiguous().view(torch.int32))
        self.register_buffer("scaler_mean_bits", nf4.scaler_mean.float().reshape(1).contiguous().view(torch.int32))
        self.register_buffer("code_bits", nf4.nf4.float().contiguous().view(torch.int32))
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        else:
            self.bias = None
        self._merged: Tensor | None = None  # dense weight while an adapter is merged in (never re-quantised)
        self._byte_table: Tensor | None = None  # derived from code_bits (see byte_table), not a buffer
        self._byte_table_key: tuple[Any, ...] | None = None

    # --- quantisation state --------------------------------------------------------------------------------
    @property
    def code(self) -> Tensor:
        """The 16-value NF4 code book (fp32)."""
        return self.code_bits.view(torch.float32)

    def scales(self) -> Tensor:
        """The dequantised per-64-block scales c₁' (fp32, one per block, padding included)."""
        factor = self.scaler_factor_bits.view(torch.float32)
        mean = self.scaler_mean_bits.view(torch.float32)
        q = self.qscalers.view(-1, self.scaler_block_size).float()
        return (q / factor.unsqueeze(1)).reshape(-1) + mean

    def byte_table(self) -> Tensor:
        """(256,) int64: entry b holds the fp32 bit patterns of the (high, low) codes of byte b, side by side.

        One 8-byte lookup per stored byte yields two weights. ``index_select`` on this 1-D table is the fastest
        gather torch offers on CPU (measured 5.6× faster than ``F.embedding`` on a (256, 2) float table, which
        was 85 % of QLoRA's dequantisation time; docs/performance.md).
        """
        bits = self.code_bits
        key = (bits.data_ptr(), bits._version, bits.device)  # load_state_dict / .to() change one of these
        if self._byte_table is None or self._byte_table_key != key:
            code = self.code
            pairs = torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1)  # byte → (high, low)
            self._byte_table = pairs.contiguous().view(torch.int64).reshape(256)
            self._byte_table_key = key
        return self._byte_table

    def dequantize_nf4(self) -> Tensor:
        """W' from the NF4 storage alone, (out, in) float32 (ignores any merged adapter)."""
        codes = self.byte_table().index_select(0, self.qdata.int()).view(torch.float32)  # (numel_padded,)
        vals = codes.view(-1, self.block_size).mul_(self.scales().unsqueeze(1))  # (n_blocks, 64)
        return vals.view(-1)[: self.numel].view(self.out_features, self.in_features)

    def dequantize_weight(self) -> Tensor:
        """The effective weight, (out, in) float32: W' (or W' + merged adapters while merged)."""
        if self._merged is not None:
            return self._merged.float()
        return self.dequantize_nf4()

    def storage_bytes(self) -> int:
        """Bytes held by the quantised weight (codes, scales, constants); the bias is not included."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    # --- merge support: a dense overlay, dropped when every adapter is unmerged -----------------------------
    def add_to_weight(self, delta: Tensor) -> None:
        """W ← W + delta, kept as a dense float copy beside the NF4 storage (which is never re-quantised)."""
        self.set_weight(self.dequantize_weight() + delta.float())

    def set_weight(self, new: Tensor) -> None:
        """W ← new (out, in), kept as a dense float copy; :meth:`drop_merged_weight` returns to pure NF4."""
        if self._merged is None:
            warnings.warn(
                "merging an adapter into an NF4 base keeps a dense float copy of the merged weight beside the "
                "NF4 codes (the codes are never re-quantised; unmerge restores them exactly). For a deployable "
                "model use lf.merge_and_unload, which returns a dequantised float model.",
                stacklevel=4,
            )
        self._merged = new.detach().float().to(self.qdata.device).contiguous()

    def drop_merged_weight(self) -> None:
        self._merged = None

    def to_float_linear(self) -> nn.Module:
        """A plain float module with the effective weight: ``nn.Linear`` (or GPT-2 ``Conv1D`` for conv1d bases)."""
        w = self.dequantize_weight().to(self.orig_dtype)
        bias = None if self.bias is None else self.bias.detach().to(self.orig_dtype)
        if self.source == "conv1d":
            from transformers.pytorch_utils import Conv1D

            layer: nn.Module = Conv1D(self.out_features, self.in_features)
            layer.weight = nn.Parameter(w.T.contiguous(), requires_grad=False)
            layer.bias = nn.Parameter(
                bias.clone() if bias is not None else torch.zeros(self.out_features, dtype=w.dtype),
                requires_grad=False,
            )
        else:
            layer = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device="meta")
            layer.weight = nn.Parameter(w.contiguous(), requires_grad=False)
            if bias is not None:
                layer.bias = nn.Parameter(bias.clone(), requires_grad=False)
        return layer.to(w.device)

    # --- forward ---------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self._merged is not None:
            out = F.linear(x, self._merged.to(x.dtype))
        else:
            out = _NF4Matmul.apply(x.to(self.compute_dtype), self)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.to(x.dtype)

    def _weight_in(self, dtype: torch.dtype) -> Tensor:
        return self.dequantize_nf4().to(dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"compute_dtype={str(self.compute_dtype).removeprefix('torch.')}, block={self.block_size}, "
            f"scaler_block={self.scaler_block_size}, merged={self._merged is not None}"
        )


class _NF4Matmul(torch.autograd.Function):
    """y = x W'ᵀ with W' dequantised in forward and again in backward (nothing weight-sized is saved)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, layer: NF4Linear) -> Tensor:  # type: ignore[override]
        ctx.layer = layer
        return F.linear(x, layer._weight_in(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None
        return grad_out @ ctx.layer._weight_in(grad_out.dtype), None


def release_float_weights(model: nn.Module) -> None:
    """After quantising, give the memory of the replaced float weights back to the operating system.

    Two things keep it resident (measured in ``benchmarks/qlora.py``): transformers maps the safetensors file
    into memory and every tensor loaded from it — the embedding, the norms — keeps the *whole* mapping (all the
    float linear weights' pages included) alive; and glibc keeps the quantiser's freed temporaries in its heap.
    So the remaining float parameters and buffers are copied into their own memory (tied weights stay tied: the
    Parameter objects are kept), and the heap is trimmed.
    """
    import gc

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, NF4Linear):
                continue
            for p in module.parameters(recurse=False):
                if not p.is_meta:
                    p.data = p.data.clone()
            for key, b in module.named_buffers(recurse=False):
                if b is not None and not b.is_meta:
                    module._buffers[key] = b.clone()
    gc.collect()
    trim_heap()


def quantize_base(layer: nn.Module, compute_dtype: str | torch.dtype = "float32") -> NF4Linear:
    """Replace-ready NF4 copy of a frozen base layer (``nn.Linear`` or GPT-2 ``Conv1D``).

    Raises:
        TypeError: the layer is neither a Linear nor a Conv1D (the message names its type).
    """
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        Conv1D = ()  # type: ignore[assignment,misc]
    if isinstance(layer, NF4Linear):
        return layer
    if isinstance(layer, nn.Linear):
        weight, source = layer.weight, "linear"
    elif Conv1D and isinstance(layer, Conv1D):
        weight, source = layer.weight.T, "conv1d"  # Conv1D stores (in, out)
    else:
        raise TypeError(
            f"quantize='nf4' supports nn.Linear and GPT-2 Conv1D base layers, not {type(layer).__name__}"
        )
    bias = getattr(layer, "bias", None)
    quantized = NF4Linear(weight, bias, compute_dtype=compute_dtype, source=source).to(weight.device)
    trim_heap()  # the quantiser's freed temporaries: out of the resident set before the next layer's
    return quantized
