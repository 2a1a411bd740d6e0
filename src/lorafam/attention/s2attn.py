"""S²-Attn: LongLoRA's shifted sparse attention, as a transformers attention function.

"LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models", Chen, Qian, Tang, Lai, Liu, Han, Jia,
ICLR 2024 — https://arxiv.org/abs/2309.12307 (§3.2).

Rule (training only; inference uses ordinary full attention, so the architecture is unchanged):
    the sequence of length N is cut into groups of G = ratio · N tokens (ratio 1/4 by default) and attention
    is causal *inside* each group. Half of the heads use the groups as they are; the other half use groups
    shifted by s = G/2, so information flows between neighbouring groups. Cost O(N·G) instead of O(N²).

Shapes: q (B, H, N, D), k/v (B, H_kv, N, D) → output (B, N, H, D), as transformers' attention functions return.

The shift. The paper's reference code rolls the shifted heads by −G/2, which puts the first G/2 tokens in the
same group as the last G/2 — and, being last, the first tokens then attend to the end of the sequence (a leak
of the future; JIA-Lab-research/LongLoRA issues #15, #90). Our default shifts *without* wrap-around, like the
reference's flash-attention path: the shifted heads see groups [0, s), [s, s+G), …, [N−(G−s), N), the two
half-groups at the ends padded (after their real tokens) to G. No token ever sees a later token. The roll
is available as ``wraparound=True`` to reproduce the paper's numbers.

Everything is expressed through one pure function, :func:`layout`: a gather index that arranges the sequence
into whole groups (with a pad slot) and its inverse. ``shift``/``unshift`` apply it and are exact inverses.

Lengths that do not split into ``1/ratio`` groups are padded at the end (the padding comes after every real
token, so causal attention never sees it; its outputs are dropped). With one group (ratio 1) there is nothing to
shift between, and S²-Attn is exactly full causal attention.

Registered with transformers' ``AttentionInterface`` under :data:`ATTN_NAME` (and with the ``sdpa`` mask
function under the same name) and selected with ``model.set_attn_implementation`` — no transformers class is
patched. Padding masks are honoured group by group.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTN_NAME = "lorafam_s2attn"
SETTINGS_ATTR = "lorafam_s2attn"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
"""Model types whose attention goes through transformers' AttentionInterface with (B, H, N, D) tensors and that
are covered by a test here (tests/unit/test_s2attn.py)."""


@dataclass(frozen=True)
class S2AttnSettings:
    """Per-attention-module settings (stored on the module as ``lorafam_s2attn``)."""

    group_size_ratio: float = 0.25
    wraparound: bool = False

    def __post_init__(self) -> None:
        groups = 1.0 / self.group_size_ratio if self.group_size_ratio > 0 else 0.0
        if not 0 < self.group_size_ratio <= 1 or abs(groups - round(groups)) > 1e-9:
            raise ValueError(
                f"group_size_ratio must be 1/k for a whole number k ≥ 1 (0.25, 0.125, 0.5, 1.0), "
                f"got {self.group_size_ratio!r}"
            )

    @property
    def num_groups(self) -> int:
        return round(1.0 / self.group_size_ratio)


# ---------------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------------
def group_size(n: int, num_groups: int) -> int:
    """G = ⌈n / num_groups⌉ (n is padded to G · num_groups when it does not divide)."""
    if n <= 0 or num_groups <= 0:
        raise ValueError(f"sequence length and number of groups must be positive, got {n}, {num_groups}")
    return math.ceil(n / num_groups)


def layout(n: int, group: int, shift: int, wraparound: bool = False) -> tuple[Tensor, Tensor]:
    """Arrange positions 0..n-1 into consecutive groups of ``group`` slots.

    Returns:
        gather: (L,) long, L a multiple of ``group``; entry = source position, or ``n`` for a pad slot.
        inverse: (n,) long; position t sits at slot ``inverse[t]`` of the layout.

    ``shift = 0``: groups [0, G), [G, 2G), … (the tail padded). ``shift = s > 0`` without wrap-around: groups
    [0, s), [s, s+G), …, each end group padded after its tokens. With ``wraparound``: the roll by −s (n must be
    a multiple of ``group``).
    """
    if not 0 <= shift < group:
        raise ValueError(f"shift must be in [0, group={group}), got {shift}")
    pos = torch.arange(n)
    if wraparound:
        if n % group:
            raise ValueError(
                f"S²-Attn with wrap-around needs a sequence length divisible by the group size: {n} tokens, "
                f"group {group}. Pad the batch to a multiple of {group} (or use the default shift, which pads)."
            )
        gather = (pos + shift) % n
        inverse = (pos - shift) % n
        return gather, inverse
    pieces: list[Tensor] = []
    start = 0
    bounds = ([shift] if shift else []) + list(range(shift + group, n + group, group))
    for end in bounds:
        real = pos[start : min(end, n)]
        pieces.append(real)
        pieces.append(torch.full((group - real.numel(),), n, dtype=torch.long))  # pad after the real tokens
        start = end
        if start >= n:
            break
    gather = torch.cat(pieces)
    inverse = torch.empty(n, dtype=torch.long)
    is_real = gather < n
    inverse[gather[is_real]] = torch.nonzero(is_real).squeeze(1)
    return gather, inverse


def shift(x: Tensor, gather: Tensor) -> Tensor:
    """(B, h, N, D) → (B, h, L, D) in layout order (pad slots are zeros)."""
    padded = torch.cat([x, x.new_zeros(*x.shape[:2], 1, x.shape[-1])], dim=2)
    return padded.index_select(2, gather.to(x.device))


def unshift(y: Tensor, inverse: Tensor) -> Tensor:
    """(B, h, L, D) in layout order → (B, h, N, D); exact inverse of :func:`shift` on real positions."""
    return y.index_select(2, inverse.to(y.device))


Runs = tuple[tuple[int, int, int], ...]
"""A layout as runs ``(slot, source, length)``: slots [slot, slot+length) hold positions [source, source+length);
every other slot is a pad. Runs are in slot order and cover every real position once."""


@functools.lru_cache(maxsize=64)
def layout_runs(n: int, group: int, shift: int, wraparound: bool = False) -> tuple[int, Runs]:
    """:func:`layout` as (L, runs): at most three runs for every layout this module builds.

    The attention then moves data with slices and one ``cat`` (whose backward is slicing again) instead of a
    gather whose backward is a scatter-add; the layout itself stays defined in one place, :func:`layout`.
    """
    gather, _ = layout(n, group, shift, wraparound)
    g = gather.tolist()
    runs: list[tuple[int, int, int]] = []
    for slot, src in enumerate(g):
        if src == n:
            continue
        if runs and runs[-1][0] + runs[-1][2] == slot and runs[-1][1] + runs[-1][2] == src:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((slot, src, 1))
    return len(g), tuple(runs)


def shift_runs(x: Tensor, total: int, runs: Runs) -> Tensor:
    """(B, h, N, D) → (B, h, L, D) in layout order, pad slots zero: slices and one ``cat``."""
    pieces: list[Tensor] = []
    at = 0
    for slot, src, length in runs:
        if slot > at:
            pieces.append(x.new_zeros(*x.shape[:2], slot - at, x.shape[-1]))
        pieces.append(x[:, :, src : src + length])
        at = slot + length
    if total > at:
        pieces.append(x.new_zeros(*x.shape[:2], total - at, x.shape[-1]))
    return pieces[0].contiguous() if len(pieces) == 1 else torch.cat(pieces, dim=2)


def unshift_runs(y: Tensor, runs: Runs) -> list[Tensor]:
    """(B, h, L, D) in layout order → the real positions' slices, in position order (cat them on dim 2)."""
    return [y[:, :, slot : slot + length] for slot, _, length in sorted(runs, key=lambda r: r[1])]


def _grouped_mask(keep: Tensor, gather: Tensor, group: int, wraparound: bool) -> Tensor:
    """(B, h', N, N) keep-mask → (B, h', ng, G, G) per-group mask in layout order."""
    idx = gather.to(keep.device).view(-1, group)  # (ng, G)
    tril = torch.ones(group, group, dtype=torch.bool, device=keep.device).tril()
    if wraparound:  # causal in layout order (the paper's roll), pad keys of the batch still excluded
        key_ok = F.pad(keep.any(dim=2), (0, 1), value=False)  # (B, h', N+1)
        m = key_ok[:, :, idx].unsqueeze(-2) & tril  # (B, h', ng, G, G)
    else:
        padded = F.pad(keep, (0, 1, 0, 1), value=False)  # (B, h', N+1, N+1)
        m = padded[:, :, idx.unsqueeze(-1), idx.unsqueeze(-2)] & tril
    return m | torch.eye(group, dtype=torch.bool, device=keep.device)  # no empty rows (NaN-free pad queries)


def _grouped_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keep: Tensor | None,
    shift_by: int,
    group: int,
    wraparound: bool,
    dropout: float,
    scaling: float | None,
) -> list[Tensor]:
    """Causal attention inside each group of the layout; returns the output's slices in position order.

    The groups are folded into the head dimension, (B, h, ng·G, D) → (B, h·ng, G, D) (a free view), so SDPA
    gets the 4-D causal problem its fused CPU kernel handles; a 5-D input sends it to the unfused path, which
    materialises every group's G×G scores (measured 1.4× *slower* than full attention at 4096 tokens).
    """
    b, h, n, d = q.shape
    total, runs = layout_runs(n, group, shift_by, wraparound)
    ql, kl, vl = (shift_runs(t, total, runs) for t in (q, k, v))
    ng = total // group
    qg, kg, vg = (t.view(b, h * ng, group, d) for t in (ql, kl, vl))
    if keep is None:
        out = F.scaled_dot_product_attention(qg, kg, vg, dropout_p=dropout, is_causal=True, scale=scaling)
    else:
        gather, _ = layout(n, group, shift_by, wraparound)
        mask = _grouped_mask(keep, gather, group, wraparound)  # (B, h' ∈ {1, h}, ng, G, G)
        mask = mask.expand(b, h, ng, group, group).reshape(b, h * ng, group, group)
        out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return unshift_runs(out.view(b, h, total, d), runs)


def _s2_in_model_layout(
    q: Tensor, k: Tensor, v: Tensor, group: int, dropout: float, scaling: float | None
) -> Tensor:
    """S²-Attn without a mask or wrap-around when n is a multiple of G ≥ 2 groups: (B, H, N, D) → (B, N, H, D).

    Same attention as :func:`_grouped_attention` on both head halves (the test compares them), with less data
    movement, measured at 4096 tokens (fwd + bwd, one layer): 14 % of the call was copies, cats and zero-fills.

    - **Groups as batch entries, in the projections' own layout.** transformers hands q/k/v as (B, H, N, D)
      views of (B, N, H, D) projections. Viewed back as (B, N, H, D), the G-token groups of a head half are
      (B·groups, G, h', D) — a free view when B = 1 (a copy otherwise) — and SDPA takes them transposed to
      (B·groups, h', G, D) without copying. Folding the groups into the head axis instead, (B, h'·groups, G, D),
      needs every input copied.
    - **No pad slots.** The shifted half's layout has two end groups of G/2 real tokens, [0, s) and [n − s, n),
      each padded to G. Here the ng − 1 whole groups are one SDPA call and the two half groups, stacked on the
      head axis, a second one of G/2 tokens: 3.5 instead of 5 G×G blocks at ng = 4, the same attention (each
      query sees the same keys; pads only ever followed them).
    - **split, not slicing,** for the head halves and the three position runs: the backward of a split is one
      ``cat`` of the pieces' gradients, where each slice's backward zero-fills a whole-sequence gradient.
    - The output is assembled in (B, N, H, D), the layout ``s2attn_forward`` returns, by two ``cat`` calls.
    """
    b, h, n, d = q.shape
    half, ng, s = h // 2, n // group, group // 2
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # (B, N, H, D)
    (qa, qb), (ka, kb), (va, vb) = (t.split([half, h - half], dim=2) for t in (qt, kt, vt))

    def grouped(t: Tensor, groups: int) -> Tensor:  # (B, groups·G, h', D) → (B·groups, h', G, D)
        return t.reshape(b * groups, group, t.shape[2], d).transpose(1, 2)

    def attend(qq: Tensor, kk: Tensor, vv: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(qq, kk, vv, dropout_p=dropout, is_causal=True, scale=scaling)

    out_a = attend(grouped(qa, ng), grouped(ka, ng), grouped(va, ng))  # (B·ng, half, G, D)
    (qs, qm, qe), (ks, km, ke), (vs, vm, ve) = (t.split([s, n - 2 * s, s], dim=1) for t in (qb, kb, vb))
    mid = attend(grouped(qm, ng - 1), grouped(km, ng - 1), grouped(vm, ng - 1))  # (B·(ng − 1), h', G, D)
    ends = attend(*(torch.cat(p, dim=2).transpose(1, 2) for p in ((qs, qe), (ks, ke), (vs, ve))))  # (B, 2h', s, D)
    first, last = ends.transpose(1, 2).split([h - half, h - half], dim=2)  # (B, s, h', D) each
    shifted = torch.cat([first, mid.transpose(1, 2).reshape(b, n - 2 * s, h - half, d), last], dim=1)
    return torch.cat([out_a.transpose(1, 2).reshape(b, n, half, d), shifted], dim=2)


def s2_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    settings: S2AttnSettings,
    attention_mask: Tensor | None = None,
    dropout: float = 0.0,
    scaling: float | None = None,
) -> Tensor:
    """Shifted sparse attention. q (B, H, N, D), k/v (B, H_kv, N, D) → (B, H, N, D).

    ``attention_mask``: None (plain causal) or a 4-D mask (B, 1|H, N, N), bool (True = attend) or additive float.
    Heads ``H//2 …`` are the shifted half (as in the reference implementation).
    """
    b, h, n, d = q.shape
    if k.shape[1] != h:  # grouped-query attention: give every query head its own copy of its k/v head
        rep = h // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    keep = None
    if attention_mask is not None:
        keep = attention_mask if attention_mask.dtype == torch.bool else attention_mask > -1e4
        keep = keep[..., :n, :n]
    groups = settings.num_groups
    g = group_size(n, groups)
    if groups == 1 or h < 2:
        pieces = _grouped_attention(q, k, v, keep, 0, g, False, dropout, scaling)
        return torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]
    if keep is None and not settings.wraparound and n % g == 0 and n >= 2 * g:
        return _s2_in_model_layout(q, k, v, g, dropout, scaling).transpose(1, 2)
    half = h // 2

    def heads(t: Tensor | None, sl: slice) -> Tensor | None:
        return None if t is None else (t if t.shape[1] == 1 else t[:, sl])

    first, second = slice(0, half), slice(half, h)
    # the two halves of the heads by split (one cat in backward; slices would each zero-fill a full gradient)
    (qa, qb), (ka, kb), (va, vb) = (t.split([half, h - half], dim=1) for t in (q, k, v))
    out_a = _grouped_attention(qa, ka, va, heads(keep, first), 0, g, False, dropout, scaling)
    out_b = _grouped_attention(
        qb, kb, vb, heads(keep, second), g // 2, g, settings.wraparound, dropout, scaling
    )  # fmt: skip
    return torch.cat([torch.cat(out_a, dim=2), torch.cat(out_b, dim=2)], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# transformers integration
# ---------------------------------------------------------------------------------------------------------------
def s2attn_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """The function registered as :data:`ATTN_NAME`: S²-Attn in training, transformers' SDPA otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    settings: S2AttnSettings | None = getattr(module, SETTINGS_ATTR, None)
    n = query.shape[2]
    if settings is None or not module.training or n != key.shape[2] or n == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    window = kwargs.get("sliding_window")
    if window is not None and window < group_size(n, settings.num_groups):
        raise ValueError(
            f"S²-Attn group size {group_size(n, settings.num_groups)} exceeds the model's sliding window "
            f"{window}; lower group_size_ratio"
        )
    out = s2_attention(query, key, value, settings, attention_mask, dropout=dropout, scaling=scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register S²-Attn (and its mask function, sdpa's) with transformers under :data:`ATTN_NAME`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, s2attn_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Self-attention modules of a supported model (the modules that call the attention interface)."""
    return [
        m
        for m in model.modules()
        if type(m).__name__.endswith("Attention") and not getattr(m, "is_cross_attention", False)
    ]


def check_supported(model: nn.Module) -> str:
    """The model type, or ValueError listing the supported ones."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"S²-Attn does not support model type {model_type!r} ({type(model).__name__}). "
            f"Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if not attention_modules(model):
        raise ValueError(f"S²-Attn found no attention modules in {type(model).__name__}")
    return model_type


def enable(model: nn.Module, settings: S2AttnSettings) -> str:
    """Switch ``model`` to S²-Attn (training only). Returns the previous attention implementation."""
    check_supported(model)
    register()
    previous = model.config._attn_implementation
    for m in attention_modules(model):
        setattr(m, SETTINGS_ATTR, settings)
    model.set_attn_implementation(ATTN_NAME)
    if model.config._attn_implementation != ATTN_NAME:  # pragma: no cover - defensive
        raise RuntimeError(f"{type(model).__name__} refused attention implementation {ATTN_NAME!r}")
    return previous


def disable(model: nn.Module, previous: str | None = "sdpa") -> None:
    """Back to ``previous`` (full attention); removes the per-module settings."""
    for m in attention_modules(model):
        if hasattr(m, SETTINGS_ATTR):
            delattr(m, SETTINGS_ATTR)
    if getattr(model.config, "_attn_implementation", None) == ATTN_NAME:
        model.set_attn_implementation(previous or "sdpa")
