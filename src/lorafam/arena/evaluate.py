"""Per-item, teacher-forced evaluation: one forward pass per test item instead of a decode loop.

For every item the prompt and the gold answer (its reply tokens plus the end-of-turn token) go through the model
once. At each answer position we read

- the negative log-likelihood of the gold token (summed over the answer: the item's **answer NLL**, in nats), and
- whether the gold token is the arg-max of the model's distribution given the gold prefix.

An item is a **teacher-forced exact match** when every answer token, the end-of-turn token included, is the
arg-max. This is the same event as "greedy decoding reproduces the gold token sequence and then stops": greedy
decoding picks the arg-max at each step, and as long as it has picked the gold tokens so far, its context *is*
the gold prefix — so by induction it emits exactly the gold tokens, then the end-of-turn token. Hence

    teacher-forced exact match  ⇒  the greedy answer equals the gold string  (for every checker that accepts gold)

and the converse fails only when greedy decoding writes the gold *string* through a different token sequence
(a non-canonical tokenisation) or writes something a normalising checker also accepts (``check_json`` ignores
spacing and field order, ``check_number`` commas). For strict string answers the arena uses the teacher-forced
score; ``tests/integration/test_arena_teacher_forced.py`` checks it against real generation on SmolLM2. Tasks with
a normalising checker additionally generate on a subset of items at the end of the run and record both, so the
report can show whether they agree.

Mixture members additionally report, per item, the mean gate of each expert (averaged over layers and over the
item's tokens): how the router split that input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache

from lorafam.arena.prompts import Encoded, collate
from lorafam.decoding import kv_cache_view


@dataclass
class ItemScores:
    """Per-item results of one evaluation, in the order of the test items."""

    nll: list[float] = field(default_factory=list)  # summed over the answer tokens (nats)
    tokens: list[int] = field(default_factory=list)  # answer tokens scored (end-of-turn included)
    em: list[int] = field(default_factory=list)  # 1 when every answer token is the arg-max
    gates: list[list[float]] | None = None  # mixture members: mean gate per expert, per item

    @property
    def exact_match(self) -> float:
        return sum(self.em) / len(self.em) if self.em else 0.0

    @property
    def mean_nll(self) -> float:
        """Mean over items of the per-token answer NLL (each item weighs the same)."""
        per = [n / max(t, 1) for n, t in zip(self.nll, self.tokens)]
        return sum(per) / len(per) if per else 0.0


def _mixture_adapters(model: nn.Module) -> list[Any]:
    from lorafam.methods.mixture import MixtureAdapter

    return [m for m in model.modules() if isinstance(m, MixtureAdapter)]


def shared_prefix(encoded: list[Encoded]) -> int:
    """Length of the prompt prefix every item shares, capped so each item keeps at least one prompt token after it
    (the position that predicts its first answer token)."""
    if not encoded:
        return 0
    first, shortest = encoded[0].prompt, min(len(e.prompt) for e in encoded)
    n = 0
    while n < shortest - 1 and all(e.prompt[n] == first[n] for e in encoded):
        n += 1
    return n


def prefix_reusable(model: nn.Module) -> bool:
    """Whether a KV cache of the shared prefix, computed once, gives every item the outputs a full forward gives.

    True unless an adapter says otherwise (:meth:`~lorafam.core.adapter.Adapter.reuses_prefix`: a sequence-level
    router reads the whole call, so a separately computed prefix would route differently).
    """
    from lorafam.core.lookup import adapted_layers

    return all(ad.reuses_prefix() for _, layer in adapted_layers(model) for ad in layer.adapters.values())


class _Prefix:
    """The shared prompt prefix's keys/values, computed once; :meth:`cache` hands each batch its own view."""

    def __init__(self, model: nn.Module, ids: list[int], device: torch.device, settings: dict[str, Any]):
        from lorafam.arena.harness import regime

        cache = DynamicCache()
        with regime(settings, device):
            model(input_ids=torch.tensor([ids], device=device), cache=cache, use_cache=True, logits_to_keep=1)
        self.keys = [layer.keys for layer in cache.layers]
        self.values = [layer.values for layer in cache.layers]

    def cache(self, rows: int) -> DynamicCache:
        return kv_cache_view(self.keys, self.values, rows=rows)


@torch.inference_mode()
def score_items(
    model: nn.Module,
    encoded: list[Encoded],
    pad_id: int,
    settings: dict[str, Any],
    device: torch.device,
    batch_size: int = 32,
    share_prefix: bool = True,
) -> ItemScores:
    """Teacher-forced NLL and exact match of every item (right-padded batches, items sorted by length so a batch
    holds similar lengths; results come back in the input order).

    The output head runs on the answer positions only (transformers' ``logits_to_keep`` with a boolean mask, as in
    training); models without that argument fall back to full logits. With ``share_prefix`` the prompt prefix
    all items share (the chat template's opening turns and the task's fixed first words: 9 of dates' 45 tokens)
    goes through the model once, and each batch continues from a copy of its KV cache; the outputs are those of
    the full forward up to float rounding (``tests/unit/test_arena_prefix.py``); a mixture's per-item gates are
    then averaged over the item's own tokens, after the prefix. Models with an adapter whose ``reuses_prefix()``
    is False (a mixture with a sequence router) always get full forwards.
    """
    from lorafam.arena.harness import regime
    from lorafam.train.loss import shifted_targets

    n = len(encoded)
    nll, tokens, em = [0.0] * n, [0] * n, [0] * n
    mixtures = _mixture_adapters(model)
    gates: list[list[float]] | None = [[] for _ in range(n)] if mixtures else None
    plen = shared_prefix(encoded) if share_prefix and prefix_reusable(model) else 0
    prefix = _Prefix(model, encoded[0].prompt[:plen], device, settings) if plen > 0 else None
    order = sorted(range(n), key=lambda i: len(encoded[i].prompt) + len(encoded[i].answer))
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = collate([encoded[i] for i in idx], pad_id, multiple=1)  # full attention: no group to divide
        batch = {k: v.to(device) for k, v in batch.items()}
        targets = shifted_targets(batch["labels"])[:, plen:]
        keep = targets != -100
        inputs: dict[str, Any] = {
            "input_ids": batch["input_ids"][:, plen:],
            "attention_mask": batch["attention_mask"],
        }
        if prefix is not None:
            inputs.update(cache=prefix.cache(len(idx)), use_cache=True)
        else:
            inputs["use_cache"] = False
        with regime(settings, device):
            try:
                logits = model(**inputs, logits_to_keep=keep).logits.float()
                flat = logits.reshape(-1, logits.shape[-1])
            except TypeError:  # a model class without logits_to_keep
                flat = model(**inputs).logits.float()[keep]
        gold = targets[keep]
        token_nll = F.cross_entropy(flat, gold, reduction="none")
        right = flat.argmax(-1) == gold
        row = keep.nonzero()[:, 0]  # batch row of each scored position
        rows = len(idx)
        sums = torch.zeros(rows, device=flat.device).index_add_(0, row, token_nll)
        counts = torch.zeros(rows, device=flat.device).index_add_(0, row, torch.ones_like(token_nll))
        wrong = torch.zeros(rows, device=flat.device).index_add_(0, row, (~right).float())
        if gates is not None:
            per_item = _item_gates(mixtures, batch["attention_mask"][:, plen:])
        for j, i in enumerate(idx):
            nll[i] = float(sums[j])
            tokens[i] = int(counts[j])
            em[i] = int(counts[j] > 0 and wrong[j] == 0)
            if gates is not None and per_item is not None:
                gates[i] = per_item[j]
    return ItemScores(nll, tokens, em, gates)


def _item_gates(mixtures: list[Any], mask: torch.Tensor) -> list[list[float]] | None:
    """Mean gate per expert for each row of the last forward: token gates averaged over the row's real tokens,
    then over layers (sequence gates are one vector per row already)."""
    per_layer = []
    m = mask.float()
    for ad in mixtures:
        g = getattr(ad, "last_gates", None)
        if g is None:
            continue
        g = g.float()
        if g.dim() == 3:  # (B, T, E) token router
            g = (g * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
        elif g.dim() != 2:
            continue
        per_layer.append(g)
    if not per_layer:
        return None
    mean = torch.stack(per_layer).mean(0)
    return [[round(float(x), 5) for x in row] for row in mean]
