"""Merging with several adapters: names on different modules, merged adapters under active_adapters /
set_active / lf.generate(adapter=...), and disabled() on a merged bf16 model (issue 10, defects 8 and 9)."""

from __future__ import annotations

import pytest
import torch

import lorafam as lf
from lorafam.core.base_layer import base_weight
from lorafam.core.inject import adapted_layers
from tests.conftest import perturb_adapters

X = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(X).logits


def _two(targets_a=("q_proj", "v_proj"), targets_b=("q_proj", "v_proj"), member_b=lf.LoraConfig):
    model = lf.tiny_llama()
    lf.attach(model, lf.LoraConfig(rank=2, alpha=4, targets=list(targets_a)), name="a")
    lf.attach(model, member_b(rank=2, alpha=4, targets=list(targets_b)), name="b")
    perturb_adapters(model, std=0.2)
    return model


def _weights(model):
    return {p: base_weight(ly.base_layer).detach().clone() for p, ly in adapted_layers(model)}


def test_merge_names_with_adapters_on_different_modules():
    model = _two(targets_a=["q_proj"], targets_b=["v_proj", "down_proj"])
    unmerged = _logits(model)
    lf.merge(model, names=["a"])  # KeyError 'a' on the v_proj layers before
    torch.testing.assert_close(_logits(model), unmerged, atol=1e-5, rtol=1e-5)
    lf.merge(model, names=["b"])
    torch.testing.assert_close(_logits(model), unmerged, atol=1e-5, rtol=1e-5)
    assert all(ly.merged == [n for n in ("a", "b") if n in ly.adapters] for _, ly in adapted_layers(model))


def test_merge_names_are_checked():
    model = _two()
    with pytest.raises(ValueError, match=r"no adapter named 'c'.*\['a', 'b'\]"):
        lf.merge(model, names=["c"])
    lf.set_active(model, ["a"])
    with pytest.raises(ValueError, match=r"'b' is not active"):
        lf.merge(model, names=["b"])


@pytest.mark.parametrize("member_b", [lf.LoraConfig, lf.DoraConfig])
def test_merged_adapter_does_not_apply_under_active_adapters(member_b):
    model = _two(member_b=member_b)
    with lf.active_adapters(model, ["b"]):
        only_b = _logits(model)
    with lf.active_adapters(model, ["a"]):
        only_a = _logits(model)
    lf.merge(model)  # a and b folded into the weights
    merged_w, merged = _weights(model), _logits(model)
    with lf.active_adapters(model, ["b"]):
        torch.testing.assert_close(_logits(model), only_b, atol=1e-5, rtol=1e-5)
    with lf.active_adapters(model, ["a"]):
        torch.testing.assert_close(_logits(model), only_a, atol=1e-5, rtol=1e-5)
    for p, w in _weights(model).items():  # put back bit for bit
        assert torch.equal(w, merged_w[p]), p
    assert torch.equal(_logits(model), merged)


def test_set_active_unmerges_adapters_it_switches_off():
    model = _two()
    with lf.active_adapters(model, ["b"]):
        only_b = _logits(model)
    lf.merge(model)
    with pytest.warns(UserWarning, match=r"unmerged \['a'\]"):
        lf.set_active(model, ["b"])
    torch.testing.assert_close(_logits(model), only_b, atol=1e-5, rtol=1e-5)
    assert all(ly.merged == ["b"] for _, ly in adapted_layers(model))


def test_generate_with_one_adapter_ignores_another_merged_one():
    model = _two()
    prompt = [5, 17, 99, 3, 42]
    want = lf.generate(model, None, prompt, adapter="b", max_new_tokens=8).new_ids
    lf.merge(model, names=["a"])
    got = lf.generate(model, None, prompt, adapter="b", max_new_tokens=8).new_ids
    assert got == want
    base = lf.generate(lf.tiny_llama(), None, prompt, max_new_tokens=8).new_ids
    assert lf.generate(model, None, prompt, max_new_tokens=8).new_ids == base
    assert want != base  # the adapter changes the greedy tokens, so a leak would show


def test_alora_on_a_base_prefix_cache_ignores_a_merged_lora():
    model = lf.tiny_llama()
    lf.attach(model, lf.LoraConfig(rank=2, alpha=4, targets=["q_proj", "v_proj"]), name="lora")
    lf.attach(
        model, lf.ALoraConfig(rank=2, alpha=4, targets=["q_proj", "v_proj"], invocation_tokens=[7, 8]), name="al"
    )
    perturb_adapters(model, std=0.2)
    history = [5, 17, 99, 3, 42, 11, 12]
    prompt = [*history, 7, 8, 20]
    want = lf.generate(model, None, prompt, adapter="al", max_new_tokens=6).new_ids
    lf.merge(model, names=["lora"])
    cache = lf.PrefixCache(model, history)
    got = lf.generate(model, None, prompt, adapter="al", cache=cache, max_new_tokens=6)
    assert got.reused_tokens > 0
    assert got.new_ids == want


def test_disabled_on_a_merged_bf16_model_does_not_drift():
    model = lf.tiny_llama().to(torch.bfloat16)
    lf.attach(model, lf.LoraConfig(rank=4, alpha=8, targets="all-linear"))
    perturb_adapters(model, std=0.2)
    lf.merge(model)
    merged_w = _weights(model)
    merged_logits = _logits(model)
    for _ in range(50):
        with lf.disabled(model):
            _logits(model)
    for p, w in _weights(model).items():
        assert torch.equal(w, merged_w[p]), p
    assert torch.equal(_logits(model), merged_logits)
