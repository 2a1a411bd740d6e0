"""A memory-lean causal-LM loss: the output head is applied chunk by chunk, only where there is a label.

The usual path materialises logits for every position (batch × seq × vocab; 4 × 256 × 49,152 fp32 = 201 MB,
plus as much again for their gradient) although most positions carry no label when the prompt is masked. Here the
model body produces hidden states, the positions whose next-token label is not -100 are gathered, and the head
+ cross-entropy run on chunks of ``chunk_size`` of them:

- a plain linear head (the usual case) goes through :class:`_ChunkedHeadCE`, which computes each chunk's loss
  *and* its gradient with respect to the hidden states (and to the head weight, when that is trainable) in the
  forward pass and frees the chunk's logits at once — no recomputation, so the head costs the same FLOPs as
  the unchunked path, and at most one chunk of logits (``chunk_size × vocab``) is alive at a time;
- any other head (an adapted ``lm_head``...) runs each chunk under non-reentrant activation checkpointing
  (same memory bound, the head's forward is recomputed in backward).

The result is the *sum* of token losses and the number of tokens, so callers can normalise over a whole
optimizer step (all micro-batches, all ranks) exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lorafam.data.encode import IGNORE_INDEX


def _body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = getattr(model, "base_model", None)
    if head is None or body is None or body is model:
        return None
    return body, head


def _logits(head: nn.Module, h: Tensor, softcap: float | None, scale: float | None) -> Tensor:
    logits = head(h).float()
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _chunk_nll(head: nn.Module, h: Tensor, y: Tensor, softcap: float | None, scale: float | None) -> Tensor:
    return F.cross_entropy(_logits(head, h, softcap, scale), y, reduction="sum")


class _ChunkedHeadCE(torch.autograd.Function):
    """Σ cross_entropy(head(h), y) over chunks of rows, with the gradients computed chunk by chunk in forward.

    With logits z = s·(h Wᵀ + b) (optionally soft-capped, z' = c·tanh(z/c)), d loss / d z = softmax(z') − onehot(y)
    (times 1 − tanh² for the cap), so d/dh = (dz · s) W and d/dW = (dz · s)ᵀ h. Both are accumulated per chunk;
    backward only scales them by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, y, chunk, scale, softcap):  # noqa: D417
        need_h = h.requires_grad
        need_w = weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        mm_dtype = weight.dtype
        for start in range(0, h.shape[0], chunk):
            hc, yc = h[start : start + chunk].to(mm_dtype), y[start : start + chunk]
            z = F.linear(hc, weight, bias).float()
            if scale is not None:
                z = z * scale
            if softcap is not None:
                t = torch.tanh(z / softcap)
                z = t * softcap
            lse = torch.logsumexp(z, dim=-1)
            total += (lse - z.gather(1, yc[:, None]).squeeze(1)).sum()
            if not (need_h or need_w or need_b):
                continue
            dz = torch.softmax(z, dim=-1)
            dz[torch.arange(len(yc), device=dz.device), yc] -= 1.0
            if softcap is not None:
                dz *= 1.0 - t * t
            if scale is not None:
                dz *= scale
            if need_h:
                grad_h[start : start + chunk] = (dz.to(mm_dtype) @ weight).to(h.dtype)
            if need_w:
                grad_w += dz.t() @ hc.float()
            if need_b:
                grad_b += dz.sum(0)
            del z, dz
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.has = (need_h, need_w, need_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.h_dtype = h.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        need_h, need_w, need_b = ctx.has
        gh = (saved.pop(0) * grad_out).to(ctx.h_dtype) if need_h else None
        gw = (saved.pop(0) * grad_out).to(ctx.dtypes[0]) if need_w else None
        gb = (saved.pop(0) * grad_out).to(ctx.dtypes[1]) if need_b else None
        return gh, gw, gb, None, None, None, None


def _plain_linear(head: nn.Module) -> bool:
    return type(head) is nn.Linear


def shifted_targets(labels: Tensor) -> Tensor:
    """Labels aligned with the position that predicts them (the last position predicts nothing)."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)


def causal_lm_loss(
    model: nn.Module, batch: dict[str, Tensor], chunk_size: int = 512, chunked: bool = True
) -> tuple[Tensor, int]:
    """``(sum of next-token NLL over labelled positions, number of those positions)``.

    ``chunked=False`` (or a model without a separable body/head) computes full logits, as transformers does.
    """
    targets = shifted_targets(batch["labels"])
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    n = int((targets != IGNORE_INDEX).sum())
    cfg = getattr(model, "config", None)
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    parts = _body_and_head(model) if chunked else None
    if parts is None:
        logits = model(**inputs, use_cache=False).logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        return nll, n
    body, head = parts
    hidden = body(**inputs, use_cache=False).last_hidden_state
    sel = targets != IGNORE_INDEX
    h = hidden[sel]
    y = targets[sel]
    if _plain_linear(head):
        return _ChunkedHeadCE.apply(h, head.weight, head.bias, y, chunk_size, scale, softcap), n
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk_size):
        hc, yc = h[start : start + chunk_size], y[start : start + chunk_size]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_nll, head, hc, yc, softcap, scale, use_reentrant=False)
        else:
            total = total + _chunk_nll(head, hc, yc, softcap, scale)
    return total, n


class LossModule(nn.Module):
    """The loss as a module, so DistributedDataParallel can wrap it (DDP hooks run on the wrapper's forward)."""

    def __init__(self, model: nn.Module, chunk_size: int = 512) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, int]:
        return causal_lm_loss(self.model, batch, self.chunk_size)
