"""A routed mixture of adapters written naively (no code shared with src/).

Output (MoPEFT-style gate over experts; Switch Transformer top-k, Fedus et al. 2021):
    h_t = W0 x_t + b + Σ_i g_i · ΔW_i x_t,   g = topk(softmax(W_r u + b_r)),
with u = x_t (token router) or u = mean_t x_t (sequence router), every expert written as a dense ΔW_i.
Balance term (Switch eq. 4): E · Σ_i f_i P_i, f_i = share of units whose top-k (arg-max when dense) holds i.
"""

from __future__ import annotations

import torch


def gates(u, w_r, b_r, top_k=None, renormalize=False):
    """u (units, in) → (probs, gates) (units, E), one unit at a time."""
    u, w_r, b_r = u.detach(), w_r.detach(), b_r.detach()
    probs, out = [], []
    for row in u:
        p = torch.softmax(w_r @ row + b_r, dim=0)
        g = p.clone()
        if top_k is not None:
            keep = sorted(range(len(p)), key=lambda i: -float(p[i]))[:top_k]
            g = torch.stack([p[i] if i in keep else torch.zeros((), dtype=p.dtype) for i in range(len(p))])
            if renormalize:
                g = g / g.sum()
        probs.append(p)
        out.append(g)
    return torch.stack(probs), torch.stack(out)


def mixture_linear(x, w0, b0, deltas, w_r, b_r, router="token", top_k=None, renormalize=False):
    """x (B, T, in), deltas: list of dense ΔW_i (out, in) → (B, T, out)."""
    bsz, t, _ = x.shape
    out = torch.zeros(bsz, t, w0.shape[0], dtype=x.dtype)
    for bi in range(bsz):
        if router == "sequence":
            _, g_seq = gates(x[bi].mean(0, keepdim=True), w_r, b_r, top_k, renormalize)
        for ti in range(t):
            if router == "token":
                _, g = gates(x[bi, ti][None], w_r, b_r, top_k, renormalize)
            else:
                g = g_seq
            w = w0 + sum(g[0, i] * d for i, d in enumerate(deltas))
            out[bi, ti] = w @ x[bi, ti] + (b0 if b0 is not None else 0)
    return out


def balance(probs, top_k=None):
    """Switch balance term for one layer from the router probabilities of all units (units, E)."""
    probs = probs.detach()
    n_units, n = probs.shape
    k = top_k or 1
    counts = torch.zeros(n, dtype=probs.dtype)
    for row in probs:
        for i in sorted(range(n), key=lambda j: -float(row[j]))[:k]:
            counts[i] += 1
    f = counts / (n_units * k)
    return n * (f * probs.mean(0)).sum()
