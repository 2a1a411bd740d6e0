"""Precision helpers: keep the frozen base in a low-precision dtype, adapters and optimizer state in fp32.

Under ``torch.autocast`` every frozen fp32 weight is re-cast on every forward; storing the frozen base directly in
bf16 removes that cost (and halves its memory) while the trainable adapter parameters stay fp32 for the
optimizer. Adapters cast their input to their own dtype and their output back to the base output's dtype.
"""

from __future__ import annotations

import torch
from torch import nn


def cast_frozen(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Cast every frozen floating-point parameter and buffer of ``model`` to ``dtype`` (in place).

    Trainable parameters (adapters, LongLoRA's embeddings/norms) keep their dtype. Call after ``attach``.
    Returns the model.
    """
    from lorafam.core.adapter import Adapter

    # an adapter's own buffers (Quantum-PEFT's circuit constants, MoPEFT's gate statistics) belong to its fp32
    # compute, not to the frozen base: casting them would put bf16 constants into fp32 factors
    adapter_buffers = {
        id(b) for m in model.modules() if isinstance(m, Adapter) for b in m.buffers() if b.is_floating_point()
    }
    for module in model.modules():
        for p in list(module.parameters(recurse=False)):
            if p.is_floating_point() and not p.requires_grad and p.dtype != dtype:
                p.data = p.data.to(dtype)
        for name, b in list(module.named_buffers(recurse=False)):
            if (
                b.is_floating_point()
                and b.dtype != dtype
                and "inv_freq" not in name
                and id(b) not in adapter_buffers
            ):
                module._buffers[name] = b.to(dtype)
    return model


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls are native here (CUDA, or a CPU with AMX / AVX512-BF16); elsewhere they are emulated
    and much slower than fp32 (measured: 300 s vs 60 s per step on an AVX2-only CPU)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return bool(cpu and (cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported()))
