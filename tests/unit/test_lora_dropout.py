"""LoRA dropout in train mode is applied whether or not autograd records (issue 10, defect 10).

PEFT's ``lora_dropout`` module runs in every train-mode forward; lorafam's decode fast path used to skip it in
any ``torch.no_grad()`` forward, so a no-grad train-mode pass (an evaluation loop that forgets ``.eval()``,
R-Drop-style consistency targets, a no-grad teacher pass) silently differed from PEFT.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import lorafam as lf
from tests.conftest import perturb_adapters

peft = pytest.importorskip("peft")

X = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _ours(member=lf.LoraConfig):
    model = lf.attach(lf.tiny_llama(), member(rank=4, alpha=8, dropout=0.5, targets=TARGETS))
    perturb_adapters(model, std=0.2)
    return model


def _forward(model, seed, grad):
    torch.manual_seed(seed)
    with torch.set_grad_enabled(grad):
        return model(X).logits.detach()


@pytest.mark.parametrize("member", [lf.LoraConfig, lf.DoraConfig])
def test_no_grad_train_forward_equals_peft(tmp_path, member):
    model = _ours(member).train()
    lf.save_adapter(model, tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(lf.tiny_llama(), tmp_path / "a").train()
    for seed in (1, 2):
        torch.testing.assert_close(_forward(model, seed, False), _forward(pm, seed, False), atol=1e-5, rtol=1e-5)


def test_no_grad_train_forward_drops_like_the_grad_one():
    model = _ours().train()
    no_grad = _forward(model, 3, False)
    torch.testing.assert_close(no_grad, _forward(model, 3, True), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(no_grad, _forward(model, 4, False))  # the mask changes with the seed
    model.eval()
    torch.testing.assert_close(_forward(model, 3, False), _forward(model, 4, False), atol=0, rtol=0)
