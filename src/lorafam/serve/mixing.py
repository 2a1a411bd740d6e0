"""The adapters' low-rank terms inside a forward: one adapter on some rows, or several adapters mixed row by row.

The engine's forward hook on each adapted base layer calls ``apply(path, x, out)`` of each term object after the
base projection ``out = x W0ᵀ + b`` ran once for the whole batch (see :mod:`lorafam.serve.lowrank` for the form).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lorafam.serve.lowrank import LowRank
from lorafam.serve.requests import ServedAdapter


@dataclass
class Group:
    """One adapter's term on some rows of a call."""

    layers: dict[str, LowRank]
    rows: Tensor | None  # None: every row of the call
    tok: int = 0  # first adapted token of the call (aLoRA prefill)

    def apply(self, path: str, x: Tensor, out: Tensor) -> None:
        lr = self.layers.get(path)
        if lr is not None:
            apply_term(lr, x, out, self.rows, self.tok)


class Grouped:
    """Rows of several adapters in one decode call, grouped by adapter (each row's own rank, no padding).

    The rows that carry an adapter are put in adapter order once per layer call (one gather of x); each adapter
    then adds its term on its own contiguous block of rows with one pair of matmuls, ``d[s:e] = (x[s:e] Aᵀ)(S Bᵀ)``,
    and one ``index_add`` puts every row's term back (no gather at all when the rows already are in that order).
    So each row costs its own adapter's rank — not the sum of the batch's ranks, as a single product with every
    adapter's factors concatenated (masked to each row's own columns) would. DoRA rows first scale their base output
    by g and add c (one broadcast product over the batch: 1 and 0 on other rows). Decode only (one token per row).
    """

    def __init__(
        self, recs: list[ServedAdapter], row_adapter: list[int], device: torch.device, dtype: torch.dtype
    ):
        order = sorted((k, i) for i, k in enumerate(row_adapter) if k >= 0)
        self.perm = torch.tensor([i for _, i in order], dtype=torch.long, device=device)
        self.in_place = [i for _, i in order] == list(range(len(row_adapter)))
        blocks: dict[int, tuple[int, int]] = {}
        for pos, (k, _) in enumerate(order):
            start, _ = blocks.get(k, (pos, pos))
            blocks[k] = (start, pos + 1)
        index = torch.tensor([k + 1 for k in row_adapter], dtype=torch.long, device=device)
        self.plans: dict[str, tuple[list[tuple[LowRank, int, int]], Tensor | None, Tensor | None]] = {}
        for path in sorted({p for rec in recs for p in rec.layers}):
            terms = [(recs[k].layers[path], s, e) for k, (s, e) in blocks.items() if path in recs[k].layers]
            if terms:
                self.plans[path] = (terms, *_dora_rows(recs, path, index, dtype, device))

    def apply(self, path: str, x: Tensor, out: Tensor) -> None:
        plan = self.plans.get(path)
        if plan is None:
            return
        terms, g, c = plan
        n_in, n_out = x.shape[-1], out.shape[-1]
        if g is not None:
            out.mul_(g)
        if c is not None:
            out.add_(c)
        x2, out2 = x.reshape(-1, n_in), out.view(-1, n_out)
        if self.in_place:
            for lr, s, e in terms:
                out2[s:e].addmm_(x2[s:e] @ lr.a_t, lr.sb_t)
            return
        xs = x2.index_select(0, self.perm)
        d = out2.new_zeros(len(self.perm), n_out)
        for lr, s, e in terms:
            d[s:e].addmm_(xs[s:e] @ lr.a_t, lr.sb_t)
        out2.index_add_(0, self.perm, d)


def _dora_rows(
    recs: list[ServedAdapter], path: str, index: Tensor, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """Per-row DoRA scale g and offset c on ``path``, (rows, 1, out): each row's adapter's, 1 and 0 for others."""
    parts = [(k, rec.layers[path]) for k, rec in enumerate(recs) if path in rec.layers]
    g = c = None
    n_out = parts[0][1].sb_t.shape[1]
    if any(lr.g is not None for _, lr in parts):
        g = torch.ones(len(recs) + 1, n_out, dtype=dtype, device=device)
        for k, lr in parts:
            if lr.g is not None:
                g[k + 1] = lr.g
        g = g[index][:, None, :]
    if any(lr.c is not None for _, lr in parts):  # DoRA on a layer with a bias
        c = torch.zeros(len(recs) + 1, n_out, dtype=dtype, device=device)
        for k, lr in parts:
            if lr.c is not None:
                c[k + 1] = lr.c
        c = c[index][:, None, :]
    return g, c


class AdapterSet:
    """The low-rank factors of several adapters concatenated along the rank axis, per layer (for :class:`Mixed`).

    For adapters a_1 … a_k on a layer: A_cat = [A_1ᵀ … A_kᵀ] (in, Σ r_i) and SB_cat = [S_1B_1ᵀ; …] (Σ r_i, out);
    ``seg`` tells which adapter each of the Σ r_i columns belongs to. No rank is padded: each adapter keeps its own
    r_i columns. DoRA's g and c are stacked per adapter (row 0: the identity, for rows of other adapters).
    """

    def __init__(self, recs: list[ServedAdapter], device: torch.device, dtype: torch.dtype):
        self.layers: dict[str, tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]] = {}
        paths = sorted({p for rec in recs for p in rec.layers})
        for path in paths:
            parts = [(k, rec.layers[path]) for k, rec in enumerate(recs) if path in rec.layers]
            a = torch.cat([lr.a_t for _, lr in parts], dim=1)
            sb = torch.cat([lr.sb_t for _, lr in parts], dim=0)
            seg = torch.cat([torch.full((lr.rank,), k, dtype=torch.long, device=device) for k, lr in parts])
            g_stack = c_stack = None
            if any(lr.g is not None for _, lr in parts):
                n_out = sb.shape[1]
                g_stack = torch.ones(len(recs) + 1, n_out, dtype=dtype, device=device)
                for k, lr in parts:
                    if lr.g is not None:
                        g_stack[k + 1] = lr.g
            if any(lr.c is not None for _, lr in parts):  # DoRA on a layer with a bias
                c_stack = torch.zeros(len(recs) + 1, sb.shape[1], dtype=dtype, device=device)
                for k, lr in parts:
                    if lr.c is not None:
                        c_stack[k + 1] = lr.c
            self.layers[path] = (a, sb, seg, g_stack, c_stack)


class Mixed:
    """Rows of several adapters in one call, the concatenated way (``EngineConfig.mixed_kernel="concat"``, kept for
    the benchmark's comparison): per layer h = (x A_cat) ∘ M, out ← G ∘ out + C + h SB_cat.

    M (rows, Σ r) keeps each row's own adapter's columns (exact zeros elsewhere, so the sum is each row's own term);
    G, C are the rows' DoRA scale/offset (1, 0 for other rows). Three kernels per layer however many adapters, but
    every row computes every adapter's columns (Σ r of the batch per row).
    """

    def __init__(self, adapter_set: AdapterSet, row_adapter: Tensor, dtype: torch.dtype):
        self.plans: dict[str, tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]] = {}
        for path, (a, sb, seg, g_stack, c_stack) in adapter_set.layers.items():
            mask = (row_adapter[:, None] == seg[None, :]).to(dtype)  # (B, Σr)
            g = None if g_stack is None else g_stack[row_adapter + 1][:, None, :]
            c = None if c_stack is None else c_stack[row_adapter + 1][:, None, :]
            self.plans[path] = (a, sb, mask, g, c)

    def apply(self, path: str, x: Tensor, out: Tensor) -> None:
        plan = self.plans.get(path)
        if plan is None:
            return
        a, sb, mask, g, c = plan
        n_in, n_out = x.shape[-1], out.shape[-1]
        h = (x.reshape(-1, n_in) @ a).mul_(mask)
        if g is not None:
            out.mul_(g)
        if c is not None:
            out.add_(c)
        out.view(-1, n_out).addmm_(h, sb)


def apply_term(lr: LowRank, x: Tensor, out: Tensor, rows: Tensor | None, tok: int) -> None:
    """out ← g ∘ out + c + (x Aᵀ)(S Bᵀ) on the given rows (all when None) from token ``tok`` on, in place."""
    n_in, n_out = x.shape[-1], out.shape[-1]
    if rows is None:
        xs, o = (x, out) if tok == 0 else (x[:, tok:], out[:, tok:])
        h = xs.reshape(-1, n_in) @ lr.a_t
        if lr.g is not None:
            o.mul_(lr.g)
            if lr.c is not None:
                o.add_(lr.c)
        if o.is_contiguous():
            o.view(-1, n_out).addmm_(h, lr.sb_t)
        else:
            o.add_((h @ lr.sb_t).view(o.shape))
        return
    xs = x.index_select(0, rows)
    d = ((xs.reshape(-1, n_in) @ lr.a_t) @ lr.sb_t).view(xs.shape[:-1] + (n_out,))
    if lr.g is None:
        out.index_add_(0, rows, d)
        return
    sub = out.index_select(0, rows).mul_(lr.g)
    if lr.c is not None:
        sub.add_(lr.c)
    out.index_copy_(0, rows, sub.add_(d))


def pick_token(logits: Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    scores = logits / temperature
    probs = torch.softmax(scores, -1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, -1) - sorted_p < top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))
