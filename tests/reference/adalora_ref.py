"""AdaLoRA written literally from the paper (Zhang et al., ICLR 2023, arXiv 2303.10512), sharing no code with src.

SVD-form update (§3.1):             W = W0 + P Λ Q,  scaled by α / r_init (the authors' code adds 1e-5 to r_init)
sensitivity (§3.2):                  I(w) = |w · ∂L/∂w|
smoothing and uncertainty (§3.2):    Ī_t = β1 Ī_{t-1} + (1-β1) I_t,   Ū_t = β2 Ū_{t-1} + (1-β2) |I_t − Ī_t|
entry score:                         s = Ī · Ū
triplet score:                       S_i = s(λ_i) + (1/d1) Σ_j s(Q_ij) + (1/d2) Σ_k s(P_ki)
budget (§3.3, cubic):                b(t) = b0 before t_i; bT + (b0 − bT)(1 − (t − t_i)/(T − t_i − t_f))³ until
                                     T − t_f; bT after
regulariser (authors' code form):    R = mean over matrices of ‖QQᵀ − I‖_F and ‖PᵀP − I‖_F
Everything is written element by element with Python loops where that keeps it obvious.
"""

from __future__ import annotations

import math

import torch


def adalora_linear(x, w0, b0, q, lam, p, alpha, init_rank):
    """x (..., in), w0 (out, in), q (r, in), lam (r,), p (out, r) → (..., out) with W formed explicitly."""
    r = q.shape[0]
    delta = torch.zeros_like(w0)
    for i in range(r):  # Σ_i λ_i P_:,i Q_i,:
        delta = delta + lam[i] * torch.outer(p[:, i], q[i])
    w = w0 + delta * alpha / (init_rank + 1e-5)
    out = x @ w.T
    return out + b0 if b0 is not None else out


def ema_step(prev_bar_i, prev_bar_u, w, g, beta1, beta2):
    """One step of sensitivity smoothing and uncertainty for one tensor; returns (Ī, Ū)."""
    sens = (w * g).abs()
    bar_i = beta1 * prev_bar_i + (1 - beta1) * sens
    bar_u = beta2 * prev_bar_u + (1 - beta2) * (sens - bar_i).abs()
    return bar_i, bar_u


def triplet_score(s_q, s_lam, s_p):
    """Entry scores of Q (r, d2), Λ (r,), P (d1, r) → S (r,)."""
    r = s_lam.shape[0]
    out = []
    for i in range(r):
        d2 = s_q.shape[1]
        d1 = s_p.shape[0]
        out.append(s_lam[i] + sum(s_q[i, j] for j in range(d2)) / d2 + sum(s_p[k, i] for k in range(d1)) / d1)
    return torch.stack(out) if out else torch.zeros(0)


def budget(t, b0, bt, ti, tf, total):
    """The cubic schedule, truncated to an integer as the authors' code does."""
    if t <= ti:
        return b0
    if t > total - tf:
        return bt
    return int(bt + (b0 - bt) * (1 - (t - ti) / (total - ti - tf)) ** 3)


def keep_top(scores_by_matrix, b):
    """Keep the b highest triplet scores over all matrices (ties at the cut dropped); {name: [bool]}."""
    flat = sorted(float(s) for scores in scores_by_matrix.values() for s in scores)
    n_drop = len(flat) - b
    cut = flat[n_drop - 1] if n_drop > 0 else -math.inf
    return {name: [float(s) > cut for s in scores] for name, scores in scores_by_matrix.items()}


def orth_regulariser(qs, ps):
    """Mean of ‖QQᵀ − I‖_F over Qs (r, in) and ‖PᵀP − I‖_F over Ps (out, r)."""
    terms = []
    for q in qs:
        terms.append(torch.sqrt(((q @ q.T - torch.eye(q.shape[0])) ** 2).sum()))
    for p in ps:
        terms.append(torch.sqrt(((p.T @ p - torch.eye(p.shape[1])) ** 2).sum()))
    return sum(terms) / len(terms)
