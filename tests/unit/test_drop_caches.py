"""lorafam.drop_caches: the remedy for parameter edits through ``.data``, which move no version counter.

Forwards without autograd reuse values derived from the parameters (LoRA's and DoRA's decoding copies, DoRA's
norm, Quantum-PEFT's circuits) while the parameters' version counters and storage stay put. ``p.data.mul_`` leaves
both as they were, so those values go stale; after ``drop_caches`` the model computes what a fresh copy of it
computes. Training forwards never reuse DoRA's norm (tests/unit/test_fused_paths.py).
"""

from __future__ import annotations

import copy

import pytest
import torch

import lorafam as lf

CONFIGS = {
    "lora": lambda: lf.LoraConfig(rank=4, alpha=8, targets="all-linear"),
    "dora": lambda: lf.DoraConfig(rank=4, alpha=8, targets="all-linear"),
    "quantum": lambda: lf.QuantumConfig(rank=4, alpha=8, targets=["q_proj", "v_proj"]),
}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = lf.tiny_llama()
    lf.attach(model, CONFIGS[name]())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)  # non-zero B (and moved angles): the adapters matter
    return model.eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_drop_caches_after_a_data_edit_gives_a_fresh_copys_outputs(name):
    model = _model(name)
    ids = torch.randint(3, 200, (1, 1))  # one token, batch 1: the decoding path
    with torch.no_grad():
        before = model(input_ids=ids).logits
        for p in model.parameters():
            if p.requires_grad:
                p.data.mul_(0.5)  # through .data: no version counter moves
        fresh = copy.deepcopy(model)
        lf.drop_caches(fresh)  # a deep copy shares nothing, but be explicit
        expected = fresh(input_ids=ids).logits
        assert not torch.allclose(expected, before, atol=1e-4)  # the edit changes the outputs
        assert lf.drop_caches(model) is model
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
        longer = torch.randint(3, 200, (2, 5))  # the general path too
        torch.testing.assert_close(model(input_ids=longer).logits, fresh(input_ids=longer).logits)
