"""Our LoRA / rsLoRA / DoRA layers against the naive paper equations in tests/reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorafam as lf
from lorafam.core.inject import adapted_layers
from tests.conftest import perturb_adapters
from tests.reference.lora_ref import dora_linear, lora_linear


def _one_layer(cfg):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(24, 12))
    lf.attach(model, cfg)
    perturb_adapters(model, std=0.2)
    ((_, layer),) = adapted_layers(model)
    return model, layer, layer.adapters["default"]


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_matches_paper_equation(rslora):
    model, layer, ad = _one_layer(lf.LoraConfig(rank=4, alpha=8, targets=["proj"], use_rslora=rslora))
    x = torch.randn(3, 5, 24)
    ref = lora_linear(x, layer.base_layer.weight, layer.base_layer.bias, ad.lora_A, ad.lora_B, 8, 4, rslora)
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_dora_matches_paper_equation_and_norms():
    model, layer, ad = _one_layer(lf.DoraConfig(rank=4, alpha=8, targets=["proj"]))
    x = torch.randn(3, 5, 24)
    args = (layer.base_layer.weight, layer.base_layer.bias, ad.lora_A, ad.lora_B, ad.lora_magnitude_vector, 8, 4)
    torch.testing.assert_close(model(x), dora_linear(x, *args), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the cached inference path gives the same answer
        torch.testing.assert_close(model(x), dora_linear(x, *args), atol=1e-5, rtol=1e-5)
    lf.merge(model)  # merged rows have exactly the magnitude as their norm
    norms = torch.linalg.norm(layer.base_layer.weight, dim=1)
    torch.testing.assert_close(norms, ad.lora_magnitude_vector.detach(), atol=1e-5, rtol=1e-5)


def test_dora_magnitude_initialised_to_row_norms():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(24, 12))
    w = model.proj.weight.detach().clone()
    lf.attach(model, lf.DoraConfig(rank=4, alpha=8, targets=["proj"]))
    m = model.proj.adapters["default"].lora_magnitude_vector
    torch.testing.assert_close(m.detach(), torch.linalg.norm(w, dim=1))


def test_dora_norm_is_detached():
    """Paper §4.3: the gradient does not flow through ‖W0 + ΔW‖_c, only through m and the numerator."""
    model, layer, ad = _one_layer(lf.DoraConfig(rank=4, alpha=8, targets=["proj"]))
    x = torch.randn(3, 24)
    model(x).sum().backward()
    got = ad.lora_B.grad.clone()
    # reference gradient with the norm held constant
    a, b, m = (
        ad.lora_A.detach(),
        ad.lora_B.detach().clone().requires_grad_(True),
        ad.lora_magnitude_vector.detach(),
    )
    w0 = layer.base_layer.weight.detach()
    v = w0 + 2.0 * (b @ a)
    norm = torch.linalg.norm(v, dim=1).detach()
    out = x @ ((m / norm).unsqueeze(1) * v).T
    out.sum().backward()
    torch.testing.assert_close(got, b.grad, atol=1e-5, rtol=1e-5)


def test_dora_dropout_training_path_matches_equation():
    """With dropout active the rule needs W0·dropout(x); with the same mask it equals the paper's h."""
    model, layer, ad = _one_layer(lf.DoraConfig(rank=4, alpha=8, targets=["proj"], dropout=0.5))
    model.train()
    x = torch.randn(3, 24)
    torch.manual_seed(5)
    got = model(x)
    torch.manual_seed(5)
    xd = torch.nn.functional.dropout(x, p=0.5, training=True)  # the same mask, drawn without the code under test
    with torch.no_grad():
        w0, b0 = layer.base_layer.weight, layer.base_layer.bias
        a, b, m = ad.lora_A, ad.lora_B, ad.lora_magnitude_vector
        v = w0 + 2.0 * (b @ a)  # W0 + s·BA formed explicitly (s = 8 / 4)
        g = m / torch.sqrt((v**2).sum(dim=1))  # m / ‖W0 + s·BA‖_c, row by row
        expected = x @ w0.T + b0 + (g - 1) * (xd @ w0.T) + g * (2.0 * (xd @ a.T @ b.T))
        assert (g - 1).abs().max() > 1e-2  # the magnitude path is not idle
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gaussian_init_std():
    cfg = lf.LoraConfig(rank=8, alpha=8, targets=["proj"], init="gaussian")
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(4096, 8))
    lf.attach(model, cfg)
    a = model.proj.adapters["default"].lora_A
    assert abs(a.std().item() - 1 / 8) < 0.01
    assert model.proj.adapters["default"].lora_B.abs().sum() == 0
