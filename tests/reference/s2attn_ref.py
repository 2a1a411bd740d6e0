"""S²-Attn written literally with an explicit mask per head, sharing no code with src.

LongLoRA (Chen et al., ICLR 2024, arXiv 2309.12307) §3.2: split N tokens into groups of G; attention is causal
within a group; half of the heads (index ≥ H // 2) use groups shifted by s = G // 2.

Shift without wrap-around (our default): the shifted heads' groups are [0, s), [s, s + G), [s + 2G), …
Shift with wrap-around (the paper's reference code): positions are rolled by −s before grouping, so the first s
tokens land in the last group and come *after* the rest of it.
A length that does not split into k groups uses G = ⌈N / k⌉ (the tail group is shorter).
"""

from __future__ import annotations

import math

import torch


def allowed(n: int, group: int, shifted: bool, wraparound: bool) -> torch.Tensor:
    """(n, n) bool: may query i attend to key j?"""
    s = group // 2
    ok = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            if not shifted:
                ok[i, j] = j <= i and i // group == j // group
            elif not wraparound:
                gi = 0 if i < s else 1 + (i - s) // group
                gj = 0 if j < s else 1 + (j - s) // group
                ok[i, j] = j <= i and gi == gj
            else:
                pi, pj = (i - s) % n, (j - s) % n  # slot in the rolled sequence
                ok[i, j] = pj <= pi and pi // group == pj // group
    return ok


def s2_attention(q, k, v, ratio: float = 0.25, wraparound: bool = False, key_valid=None, scale=None):
    """q (B, H, N, D), k/v (B, H_kv, N, D) → (B, H, N, D). ``key_valid`` (B, N) bool excludes padded keys."""
    b, h, n, d = q.shape
    rep = h // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    groups = round(1 / ratio)
    group = math.ceil(n / groups)
    scale = scale if scale is not None else 1 / math.sqrt(d)
    out = torch.zeros_like(q)
    for head in range(h):
        shifted = groups > 1 and head >= h // 2
        ok = allowed(n, group, shifted, wraparound)
        for bi in range(b):
            mask = ok.clone()
            if key_valid is not None:
                mask &= key_valid[bi].unsqueeze(0)
                mask |= torch.eye(n, dtype=torch.bool)
            scores = (q[bi, head] @ k[bi, head].T) * scale
            scores = scores.masked_fill(~mask, float("-inf"))
            out[bi, head] = torch.softmax(scores, dim=-1) @ v[bi, head]
    return out


def full_causal_attention(q, k, v, scale=None):
    b, h, n, d = q.shape
    rep = h // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scale = scale if scale is not None else 1 / math.sqrt(d)
    scores = (q @ k.transpose(-1, -2)) * scale
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v
