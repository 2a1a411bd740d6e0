"""The chunked loss equals the full-logits loss (value and gradients) and only touches labelled positions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lorafam as lf
from lorafam.train.loss import causal_lm_loss
from tests.conftest import perturb_adapters


def naive_loss(model, batch):
    """Transformers-style: full logits, shift by one, mean over labelled tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)


@pytest.mark.parametrize("make", [lf.tiny_llama, lf.tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("chunk", [3, 512])
def test_chunked_loss_matches_full_logits(make, chunk):
    model = make()
    lf.attach(model, lf.LoraConfig(rank=4, targets="all-linear"))
    perturb_adapters(model)
    ids = torch.randint(3, 256, (3, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # a masked prompt
    labels[2, 9:] = -100  # and padding
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    ref = naive_loss(model, batch)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    total, n = causal_lm_loss(model, batch, chunk_size=chunk)
    assert n == int((labels[:, 1:] != -100).sum())
    (total / n).backward()
    torch.testing.assert_close(total / n, ref, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, ref_grads[name], atol=1e-6, rtol=1e-4)


def test_unchunked_path_agrees():
    model = lf.tiny_llama()
    ids = torch.randint(3, 256, (2, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    a, n = causal_lm_loss(model, batch, chunk_size=4)
    b, m = causal_lm_loss(model, batch, chunked=False)
    assert n == m == 14
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
