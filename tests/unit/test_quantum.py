"""Quantum-PEFT: the circuit against dense Kronecker products, orthonormality, parameter count, forward, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lorafam as lf
from lorafam.core.inject import adapted_layers
from lorafam.methods.quantum_circuit import PauliCircuit, n_angles
from tests.conftest import perturb_adapters
from tests.reference.quantum_ref import circuit_matrix, n_params, quantum_delta


@pytest.mark.parametrize(
    ("n", "layers"),
    [
        (2, 1),
        (3, 2),
        (4, 3),
        (5, 1),
        (6, 2),
        (8, 2),
        (12, 1),
        (12, 3),
        (16, 2),
        (20, 1),
        (24, 2),
        (40, 1),
        (48, 2),
        (96, 1),
    ],
)
def test_circuit_equals_dense_kronecker_reference(n, layers):
    for k in sorted({1, min(3, n), min(8, n), n}):
        theta = torch.rand(2, n_angles(n, layers)) * 2 * math.pi - math.pi
        got = PauliCircuit(n, k, layers)(theta)
        for g in range(2):
            ref = circuit_matrix(n, layers, theta[g])[:, :k]
            torch.testing.assert_close(got[g].double(), ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("n", [5, 12, 192, 576, 1000, 1536, 2048])
@pytest.mark.parametrize("layers", [1, 2])
def test_columns_orthonormal_for_any_n(n, layers):
    k = 16 if n >= 16 else n
    theta = torch.rand(3, n_angles(n, layers)) * 2 * math.pi - math.pi
    u = PauliCircuit(n, k, layers)(theta)  # (3, n, k)
    eye = torch.eye(k).expand(3, k, k)
    torch.testing.assert_close(u.transpose(1, 2) @ u, eye, atol=1e-5, rtol=0)


def test_leading_block_of_an_unmasked_circuit_is_not_orthonormal():
    """Why the masking exists: slicing the leading N rows of a 2^q circuit loses orthonormality."""
    theta = torch.rand(n_angles(8, 1)) * 2 * math.pi
    u8 = circuit_matrix(8, 1, theta)[:, :3]
    sliced = u8[:6]
    assert (sliced.T @ sliced - torch.eye(3, dtype=torch.float64)).abs().max() > 1e-3


@pytest.mark.parametrize("n", [2, 3, 64, 576, 1536, 49152])
@pytest.mark.parametrize("layers", [1, 2, 4])
def test_parameter_count_formula(n, layers):
    q = math.ceil(math.log2(n))
    assert n_angles(n, layers) == (2 * layers + 1) * q - 2 * layers == n_params(n, layers)


def test_trainable_summary_shows_the_count():
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(40, 24))
    lf.attach(model, lf.QuantumConfig(rank=4, alpha=8, layers=2, targets=["proj"]))
    expected = ((2 * 2 + 1) * 6 - 4) + ((2 * 2 + 1) * 5 - 4) + 4  # V: N=40 (q=6), U: N=24 (q=5), λ: K
    line = lf.trainable_summary(model, printer=None)
    assert line.startswith(f"trainable params: {expected:,} ||")


def test_forward_matches_dense_reference_and_starts_at_identity():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(20, 12))
    lf.attach(model, lf.QuantumConfig(rank=3, alpha=6, layers=2, targets=["proj"]))
    ((_, layer),) = adapted_layers(model)
    ad = layer.adapters["default"]
    x = torch.randn(2, 5, 20)
    torch.testing.assert_close(model(x), layer.base_layer(x))  # λ = 0
    perturb_adapters(model, std=0.5)
    delta = quantum_delta(ad.theta_u, ad.theta_v, ad.lam, 12, 20, 2, 6.0, 3)
    w = layer.base_layer.weight.double() + delta
    ref = x.double() @ w.T + layer.base_layer.bias.double()
    torch.testing.assert_close(model(x).double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ad.delta_weight(layer.base_layer).double(), delta, atol=1e-6, rtol=1e-5)


def test_batched_bank_equals_per_adapter_and_survives_gradient_accumulation():
    model = lf.attach(lf.tiny_gpt2(), lf.QuantumConfig(rank=4, alpha=8, targets="all-linear"))
    perturb_adapters(model)
    model.eval()  # GPT-2's own dropout off: two identical micro-batches must give identical gradients
    x = torch.randint(3, 256, (2, 8))
    adapters = [layer.adapters["default"] for _, layer in adapted_layers(model)]
    for ad in adapters:
        u, v = ad.factors()
        torch.testing.assert_close(u, ad.circuit_u(ad.theta_u[None])[0])
        torch.testing.assert_close(v, ad.circuit_v(ad.theta_v[None])[0])
    model(x, labels=x).loss.backward()
    once = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model(x, labels=x).loss.backward()  # a second micro-batch: the cached circuit graph must not be reused
    twice = [p.grad for p in model.parameters() if p.requires_grad]
    for a, b in zip(once, twice):
        torch.testing.assert_close(b, 2 * a, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # after an optimizer-like update the factors follow the new angles
        adapters[0].theta_u.add_(0.3)
    u, _ = adapters[0].factors()
    torch.testing.assert_close(u, adapters[0].circuit_u(adapters[0].theta_u[None])[0])


def test_rank_larger_than_layer_is_an_error_naming_the_key_and_module():
    with pytest.raises(ValueError, match=r"'rank' \(K=100\).*c_attn"):
        lf.attach(lf.tiny_gpt2(), lf.QuantumConfig(rank=100, alpha=8, targets=["c_attn"]))


@pytest.mark.parametrize("layers", [0, -1, 1.5, True])
def test_layers_below_one_is_an_error_naming_the_key(layers):
    with pytest.raises(ValueError, match="'layers'"):
        lf.QuantumConfig(rank=4, layers=layers)


def test_unknown_key_and_bad_init_name_the_key():
    with pytest.raises(ValueError, match="'init_angles'"):
        lf.QuantumConfig(rank=4, init_angles="gaussian")
    with pytest.raises(ValueError, match="layer"):
        lf.QuantumConfig.from_dict({"rank": 4, "layer": 2})
