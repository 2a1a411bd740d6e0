"""LoRA+: B's learning rate is exactly ratio × A's; groups come from parameter roles."""

from __future__ import annotations

import pytest

import lorafam as lf
from tests.reference.lora_ref import loraplus_lrs


def _groups(opt):
    return {g["name"]: g for g in opt.param_groups}


@pytest.mark.parametrize("ratio", [2.0, 16.0])
def test_b_lr_is_ratio_times_a(ratio):
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2))
    opt = lf.make_optimizer(model, lr=1e-4, loraplus_ratio=ratio)
    g = _groups(opt)
    ref = loraplus_lrs(1e-4, ratio)
    assert g["a"]["lr"] == ref["A"] and g["b"]["lr"] == ref["B"]
    a_ids = {id(p) for p in g["a"]["params"]}
    b_ids = {id(p) for p in g["b"]["params"]}
    for _, layer in lf.core.inject.adapted_layers(model):
        ad = layer.adapters["default"]
        assert id(ad.lora_A) in a_ids and id(ad.lora_B) in b_ids


def test_groups_use_roles_not_names():
    """A parameter called 'lora_B' but playing role 'a' must get the A learning rate."""
    model = lf.attach(lf.tiny_llama(), lf.DoraConfig(rank=2, targets=["q_proj"]))
    ad = model.model.layers[0].self_attn.q_proj.adapters["default"]
    ad.param_roles = lambda: {"lora_B": "a", "lora_A": "b", "lora_magnitude_vector": "magnitude"}
    g = _groups(lf.make_optimizer(model, lr=1e-3, loraplus_ratio=4))
    assert any(p is ad.lora_B for p in g["a"]["params"])
    assert any(p is ad.lora_A for p in g["b"]["params"])
    assert any(p is ad.lora_magnitude_vector for p in g["b"]["params"])  # PEFT: B's lr and loraplus_weight_decay


def test_without_ratio_everything_gets_lr_and_peft_agrees():
    peft_loraplus = pytest.importorskip("peft.optimizers")
    import torch

    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2))
    opt = lf.make_optimizer(model, lr=3e-4)
    assert {g["lr"] for g in opt.param_groups} == {3e-4}
    # PEFT's LoRA+ on a PEFT model: same lr per tensor role as ours
    import peft

    pm = peft.get_peft_model(lf.tiny_llama(), peft.LoraConfig(r=2, target_modules="all-linear"))
    popt = peft_loraplus.create_loraplus_optimizer(pm, torch.optim.AdamW, lr=3e-4, loraplus_lr_ratio=16)
    peft_lrs = sorted({g["lr"] for g in popt.param_groups if g["params"]})
    ours = sorted({g["lr"] for g in lf.make_optimizer(model, lr=3e-4, loraplus_ratio=16).param_groups})
    assert peft_lrs == ours


def test_bad_optimizer_arguments():
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2))
    with pytest.raises(ValueError, match="loraplus_ratio"):
        lf.make_optimizer(model, lr=1e-4, loraplus_ratio=0)
    with pytest.raises(ValueError, match="optimizer"):
        lf.make_optimizer(model, lr=1e-4, optimizer="lion")
    frozen = lf.tiny_llama().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        lf.make_optimizer(frozen, lr=1e-4)
    # a plain model with everything trainable is full fine-tuning: one lr for all
    full = lf.make_optimizer(lf.tiny_llama(), lr=1e-5)
    assert sum(len(g["params"]) for g in full.param_groups) == len(list(lf.tiny_llama().parameters()))
