"""LoRA and DoRA written literally from the papers' equations, sharing no code with ``src/``.

LoRA (Hu et al. 2021, eq. 3):   h = W0 x + (α/r) · B A x          (rsLoRA: α/√r, Kalajdzievski 2023)
DoRA (Liu et al. 2024, eq. 5):  W' = m · (W0 + BA·s) / ‖W0 + BA·s‖_c,   h = W' x + b
"""

from __future__ import annotations

import math

import torch


def lora_linear(x, w0, b0, a, b, alpha, rank, rslora=False):
    """x (..., in), w0 (out, in), a (r, in), b (out, r) → (..., out)."""
    s = alpha / math.sqrt(rank) if rslora else alpha / rank
    w = w0 + s * (b @ a)  # the merged weight, formed explicitly
    out = x @ w.T
    return out + b0 if b0 is not None else out


def dora_linear(x, w0, b0, a, b, m, alpha, rank):
    """x (..., in), m (out,) → (..., out), with W' formed explicitly row by row."""
    s = alpha / rank
    v = w0 + s * (b @ a)
    rows = []
    for i in range(v.shape[0]):
        rows.append(m[i] * v[i] / torch.sqrt((v[i] ** 2).sum()))
    w = torch.stack(rows)
    out = x @ w.T
    return out + b0 if b0 is not None else out


def loraplus_lrs(lr, ratio):
    """LoRA+ (Hayou et al. 2024, §4): η_A = η, η_B = λ η."""
    return {"A": lr, "B": lr * ratio}
