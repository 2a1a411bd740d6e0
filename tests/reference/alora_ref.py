"""aLoRA written literally from the paper, sharing no code with ``src/``.

Activated LoRA (Greenewald et al. 2025, arXiv 2504.12397, §3): with t* the start of the last occurrence of the
invocation sequence in the row,

    h_t = W0 x_t + b0 + (α/r) · B A x_t   for t ≥ t*
    h_t = W0 x_t + b0                     for t < t*   (and for every t when the row has no invocation)
"""

from __future__ import annotations

import torch
from torch import nn


def last_invocation_start(row: list[int], invocation: list[int]) -> int | None:
    """Plain Python scan from the right: the start of the last complete occurrence, or None."""
    k = len(invocation)
    for start in range(len(row) - k, -1, -1):
        if row[start : start + k] == invocation:
            return start
    return None


def alora_linear(x, w0, b0, a, b, alpha, rank, start):
    """x (T, in) for ONE row, start = t* or None → (T, out), token by token."""
    s = alpha / rank
    rows = []
    for t in range(x.shape[0]):
        h = w0 @ x[t]
        if b0 is not None:
            h = h + b0
        if start is not None and t >= start:
            h = h + s * (b @ (a @ x[t]))
        rows.append(h)
    return torch.stack(rows)


class NaiveALoraLinear(nn.Module):
    """Stands in for one target Linear of a model; reads per-row starts from a shared dict set before forward."""

    def __init__(self, w0, b0, a, b, alpha, rank, ctx):
        super().__init__()
        self.w0, self.b0, self.a, self.b = w0, b0, a, b
        self.alpha, self.rank, self.ctx = alpha, rank, ctx

    def forward(self, x):
        outs = [
            alora_linear(x[i], self.w0, self.b0, self.a, self.b, self.alpha, self.rank, self.ctx["starts"][i])
            for i in range(x.shape[0])
        ]
        return torch.stack(outs)
