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


def test_fused_head_gradients_for_a_trainable_head_with_softcap():
    """The chunk-wise gradient formulas (hidden, weight, bias; scale and soft-cap) against autograd."""
    from lorafam.train.loss import _ChunkedHeadCE

    torch.manual_seed(0)
    h = torch.randn(10, 6, requires_grad=True)
    w = torch.randn(20, 6, requires_grad=True)
    b = torch.randn(20, requires_grad=True)
    y = torch.randint(0, 20, (10,))
    for scale, cap in ((None, None), (0.5, None), (None, 3.0), (2.0, 5.0)):
        z = F.linear(h, w, b)
        if scale is not None:
            z = z * scale
        if cap is not None:
            z = torch.tanh(z / cap) * cap
        ref = F.cross_entropy(z, y, reduction="sum")
        ref_grads = torch.autograd.grad(ref, (h, w, b))
        got = _ChunkedHeadCE.apply(h, w, b, y, 3, scale, cap)
        grads = torch.autograd.grad(2.0 * got, (h, w, b))
        torch.testing.assert_close(got, ref)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, 2.0 * r, atol=1e-5, rtol=1e-5)
