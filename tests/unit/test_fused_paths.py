"""The fused forward paths (``add_output``) equal the general rule ``out + delta_output`` — values and grads.

LoRA folds its scale and the addition into one ``addmm``; DoRA computes g · (W0 x + s·BA x) with one saved
tensor and an in-place multiply at inference. These tests pin them to the unfused definition.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorafam as lf
from lorafam.core.adapter import Adapter
from lorafam.core.inject import adapted_layers
from tests.conftest import perturb_adapters


def _layer(cfg, bias: bool = True):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(24, 12, bias=bias))
    lf.attach(model, cfg)
    perturb_adapters(model, std=0.2)
    ((_, layer),) = adapted_layers(model)
    return layer, layer.adapters["default"]


def _general(layer, x):
    """The unfused definition, as the base class computes it."""
    base_out = layer.base_layer(x)
    ad = layer.adapters["default"]
    return Adapter.add_output(ad, x, base_out, base_out, layer.base_layer)


CONFIGS = {
    "lora": lambda: lf.LoraConfig(rank=4, alpha=8, targets=["proj"]),
    "rslora": lambda: lf.LoraConfig(rank=4, alpha=8, targets=["proj"], use_rslora=True),
    "dora": lambda: lf.DoraConfig(rank=4, alpha=8, targets=["proj"]),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_equals_general_values_and_grads(name, bias):
    layer, ad = _layer(CONFIGS[name](), bias)
    x = torch.randn(3, 5, 24, requires_grad=True)
    fused = layer(x)
    fused.square().sum().backward()
    grads_fused = [x.grad.clone()] + [p.grad.clone() for p in ad.parameters()]
    x.grad = None
    ad.zero_grad()
    general = _general(layer, x)
    general.square().sum().backward()
    grads_general = [x.grad] + [p.grad for p in ad.parameters()]
    torch.testing.assert_close(fused, general, atol=1e-5, rtol=1e-5)
    for gf, gg in zip(grads_fused, grads_general):
        torch.testing.assert_close(gf, gg, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_inference_path_equals_general(name):
    layer, _ = _layer(CONFIGS[name]())
    x = torch.randn(2, 7, 24)
    with torch.no_grad():
        expected = _general(layer, x)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer(x[0, :1]), expected[0, :1], atol=1e-5, rtol=1e-5)  # one decode token
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_under_autocast_and_with_bf16_base(name):
    layer, _ = _layer(CONFIGS[name]())
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        ref = _general(layer, x)
        with torch.autocast("cpu", torch.bfloat16):
            got = layer(x)
    assert got.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: operands rounded to bf16, fp32 accumulation, one rounding of the result, so
    # the error is a few units in the last place of the largest output. Measured: at most 0.0076 × max|ref|
    # (DoRA), 0.0035 (LoRA); allowed 3 ulps = 3 · 2⁻⁸ of the largest value.
    bound = 3 * 2**-8 * float(ref.abs().max())
    assert float((got.float() - ref).abs().max()) <= bound
    lf.cast_frozen(layer)  # frozen base in bf16, adapter fp32, no autocast: the mixed-dtype path
    assert layer.base_layer.weight.dtype == torch.bfloat16
    with torch.no_grad():
        got = layer(x.bfloat16())
        general = _general(layer, x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(
        got, general, atol=0, rtol=0
    )  # fused == unfused on the same bf16 inputs, bit for bit
    assert float((got.float() - ref).abs().max()) <= bound  # and within the bf16 rounding of the fp32 result


def test_dora_as_second_adapter_takes_the_general_path():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(24, 12))
    lf.attach(model, lf.LoraConfig(rank=4, alpha=8, targets=["proj"]), name="first")
    lf.attach(model, lf.DoraConfig(rank=4, alpha=8, targets=["proj"]), name="second")
    perturb_adapters(model, std=0.2)
    layer = model.proj
    x = torch.randn(3, 24)
    base_out = layer.base_layer(x)
    first, second = layer.adapters["first"], layer.adapters["second"]
    expected = base_out + first.delta_output(x, base_out, layer.base_layer)
    expected = expected + second.delta_output(x, base_out, layer.base_layer)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_inference_cache_follows_weight_updates(name):
    """The decode path caches Aᵀ and s·Bᵀ: training steps, loads and rescaling must invalidate it."""
    layer, ad = _layer(CONFIGS[name]())
    x = torch.randn(1, 1, 24)
    with torch.no_grad():
        before = layer(x).clone()
        ad.lora_B.add_(0.3)  # an optimizer step updates in place
        torch.testing.assert_close(layer(x), _general(layer, x), atol=1e-5, rtol=1e-5)
        assert (layer(x) - before).abs().max() > 1e-3
        ad.load_state_dict({k: v + 0.1 for k, v in ad.state_dict().items()})
        torch.testing.assert_close(layer(x), _general(layer, x), atol=1e-5, rtol=1e-5)
        ad.lora_A.data = ad.lora_A.data * 2  # new storage
        torch.testing.assert_close(layer(x), _general(layer, x), atol=1e-5, rtol=1e-5)
        ad.scaling = ad.scaling / 2
        torch.testing.assert_close(layer(x), _general(layer, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batch_one_decode_path_equals_general(name):
    """Batch 1 without autograd takes bmm/baddbmm on cached transposes (prefill and single tokens alike)."""
    layer, _ = _layer(CONFIGS[name]())
    for x in (torch.randn(1, 7, 24), torch.randn(1, 1, 24), torch.randn(1, 3, 24)[:, ::2]):  # last: a strided view
        with torch.no_grad():
            torch.testing.assert_close(layer(x), _general(layer, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_caches_built_in_inference_mode_do_not_leak_into_training(name):
    """Inference tensors cannot be saved for backward: a cache filled under inference_mode is not reused there."""
    layer, ad = _layer(CONFIGS[name]())
    x = torch.randn(1, 2, 24)
    with torch.inference_mode():
        layer(x)
    with torch.no_grad():
        layer(x)
    y = layer(x)  # grad mode: DoRA's g = m / norm saves the norm for m's gradient
    y.square().sum().backward()
    assert all(p.grad is not None for p in ad.parameters())


def test_dora_norm_is_recomputed_in_training_and_cached_without_autograd():
    """A forward that records autograd computes the norm afresh (same values, identical gradients), so an update
    the version counters cannot see (through ``.data``, as some optimizers write) is never trained on stale;
    forwards without autograd reuse it until an in-place update renews it."""
    layer, ad = _layer(CONFIGS["dora"]())
    x = torch.randn(2, 3, 24)
    calls = []
    compute = ad._weight_norm
    ad._weight_norm = lambda *a: calls.append(1) or compute(*a)  # count real computations
    layer(x).square().sum().backward()
    first = [p.grad.clone() for p in ad.parameters()]
    ad.zero_grad()
    layer(x).square().sum().backward()  # second micro-batch: recomputed, identical gradients
    assert len(calls) == 2
    for a, b in zip(first, [p.grad for p in ad.parameters()]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    ad.lora_B.data.add_(0.05)  # an update through .data: no version counter moves
    torch.testing.assert_close(layer(x), _general(layer, x), atol=1e-5, rtol=1e-5)
    assert len(calls) == 4
    with torch.no_grad():
        layer(x), layer(x)
        assert len(calls) == 5  # one computation for both forwards without autograd
        ad.lora_A.add_(0.05)  # what an optimizer step does
        torch.testing.assert_close(layer(x), _general(layer, x), atol=1e-5, rtol=1e-5)
        assert len(calls) == 6
