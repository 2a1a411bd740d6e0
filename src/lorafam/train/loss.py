"""A memory-lean causal-LM loss: the output head is applied chunk by chunk, only where there is a label.

The usual path materialises logits for every position (batch × seq × vocab; 4 × 256 × 49,152 fp32 = 201 MB,
plus as much again for their gradient) although most positions carry no label when the prompt is masked. Here the
model body produces hidden states, the positions whose next-token label is not -100 are gathered, and the head
+ cross-entropy run on chunks of ``chunk_size`` of them. Each chunk is wrapped in non-reentrant activation
checkpointing, so its logits are freed after the forward and recomputed in backward: at most one chunk of logits
(``chunk_size × vocab``) is alive at a time.

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
