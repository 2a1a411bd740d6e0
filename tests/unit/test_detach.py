"""Per-adapter removal (lf.detach) and failed attaches/loads that leave the model as it was."""

from __future__ import annotations

import pytest
import torch

import lorafam as lf
from lorafam.core.inject import adapted_layers
from tests.conftest import perturb_adapters


def _logits(model):
    x = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x).logits


def _with_keep():
    model = lf.tiny_llama(seed=0)
    lf.attach(model, lf.LoraConfig(rank=2, targets=["q_proj", "v_proj"]), name="keep")
    perturb_adapters(model)
    return model


def test_attach_failing_on_a_later_layer_leaves_the_model_as_it_was():
    model = _with_keep()
    before = _logits(model)
    modules = {n: type(m) for n, m in model.named_modules()}
    # K = 40 fits q_proj (64×64), which comes first, but not k_proj (32×64: two KV heads of 16)
    cfg = lf.QuantumConfig(rank=8, targets=["q_proj", "k_proj"])
    with pytest.raises(ValueError, match="k_proj.*K <= min"):
        lf.attach(model, lf.QuantumConfig(rank=40, targets=["q_proj", "k_proj"]), name="new")
    assert {n: type(m) for n, m in model.named_modules()} == modules
    assert set(lf.configs(model)) == {"keep"}
    torch.testing.assert_close(_logits(model), before)
    lf.attach(model, cfg, name="new")  # the name is free again


def test_on_attach_failure_is_undone():
    model = _with_keep()
    before = _logits(model)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        lf.attach(model, lf.ALoraConfig(invocation_tokens=[10_000]), name="al")
    assert set(lf.configs(model)) == {"keep"}
    assert all(set(layer.adapters) == {"keep"} for _, layer in adapted_layers(model))
    torch.testing.assert_close(_logits(model), before)


def test_failed_load_removes_only_the_adapter_it_attached(tmp_path):
    src = lf.tiny_llama(seed=0)
    lf.attach(src, lf.LoraConfig(rank=2, targets=["q_proj"]))
    lf.save_adapter(src, tmp_path / "ad")
    other = lf.tiny_llama(seed=0, hidden=32, heads=4)  # same names, other shapes: the load fails
    lf.attach(other, lf.LoraConfig(rank=2, targets=["q_proj", "v_proj"]), name="keep")
    perturb_adapters(other)
    before = _logits(other)
    with pytest.raises(ValueError, match="different base model"):
        lf.load_adapter(other, tmp_path / "ad", name="loaded")
    assert set(lf.configs(other)) == {"keep"}
    torch.testing.assert_close(_logits(other), before)


def test_detach_keeps_a_merged_neighbour_merged():
    model = _with_keep()
    lf.attach(model, lf.DoraConfig(rank=2, targets=["q_proj"]), name="d")
    perturb_adapters(model, seed=3)
    lf.merge(model)
    lf.detach(model, "d")
    layer = dict(adapted_layers(model))["model.layers.0.self_attn.q_proj"]
    assert layer.merged == ["keep"] and list(layer.adapters) == ["keep"]
    merged = _logits(model)
    lf.unmerge(model)
    torch.testing.assert_close(_logits(model), merged, atol=1e-5, rtol=1e-5)
