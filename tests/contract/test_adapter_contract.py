"""The contract every registry member keeps, on a tiny Llama and a tiny GPT-2.

Parametrised over ``lorafam.MEMBERS``: a member that is not in the registry is not in the library, and a member
in the registry is tested here with no per-member code (per-member needs live in ``MethodSpec``).
"""

from __future__ import annotations

import pytest
import torch

import lorafam as lf
from lorafam.core.base_layer import base_weight, set_base_weight
from lorafam.core.inject import adapted_layers, named_adapter_params
from lorafam.core.record import record
from lorafam.family import METHODS
from tests.conftest import perturb_adapters

MEMBER_NAMES = list(lf.MEMBERS)
ARCHS = {"llama": lf.tiny_llama, "gpt2": lf.tiny_gpt2}


def _build(member_name: str, arch: str):
    member = lf.MEMBERS[member_name]
    spec = METHODS[member.method]
    base = ARCHS[arch]()
    ref = ARCHS[arch]()
    cfg = member.make_config(rank=4, alpha=8, **spec.contract_kwargs)
    model = lf.attach(base, cfg)
    if cfg.quantize is not None:  # a quantised base's reference is the same model with the dequantised weights
        for path, layer in adapted_layers(model):
            set_base_weight(ref.get_submodule(path), base_weight(layer.base_layer))
    return model, ref, spec, cfg


def _x() -> torch.Tensor:
    return torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(0))


def _logits(model, x=None):
    with torch.no_grad():
        return model(_x() if x is None else x).logits


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", MEMBER_NAMES)
def test_identity_at_init(name, arch):
    model, ref, spec, _ = _build(name, arch)
    torch.testing.assert_close(_logits(model), _logits(ref), atol=spec.tolerance, rtol=spec.tolerance)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", MEMBER_NAMES)
def test_disabled_equals_base_and_perturbed_differs(name, arch):
    model, ref, spec, _ = _build(name, arch)
    perturb_adapters(model)
    assert (_logits(model) - _logits(ref)).abs().max() > 1e-4, "perturbed adapter had no effect"
    with lf.disabled(model):
        torch.testing.assert_close(_logits(model), _logits(ref), atol=spec.tolerance, rtol=spec.tolerance)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", MEMBER_NAMES)
def test_merge_contract(name, arch):
    model, _, spec, _ = _build(name, arch)
    perturb_adapters(model)
    unmerged = _logits(model)
    if not spec.adapter_cls.mergeable:
        with pytest.raises(NotImplementedError):
            lf.merge(model)
        return
    weights = {p: base_weight(layer.base_layer).detach().clone() for p, layer in adapted_layers(model)}
    lf.merge(model)
    merged = _logits(model)
    lf.merge(model)  # idempotent
    torch.testing.assert_close(_logits(model), merged, atol=0, rtol=0)
    torch.testing.assert_close(merged, unmerged, atol=spec.tolerance * 10, rtol=spec.tolerance * 10)
    lf.unmerge(model)
    lf.unmerge(model)  # idempotent
    for p, layer in adapted_layers(model):
        torch.testing.assert_close(base_weight(layer.base_layer), weights[p], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(_logits(model), unmerged, atol=spec.tolerance * 10, rtol=spec.tolerance * 10)
    # merge_and_unload gives a plain model with the same outputs
    plain = lf.merge_and_unload(model)
    assert not list(adapted_layers(plain))
    torch.testing.assert_close(_logits(plain), unmerged, atol=spec.tolerance * 10, rtol=spec.tolerance * 10)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", MEMBER_NAMES)
def test_save_load_round_trip(tmp_path, name, arch):
    model, _, spec, _ = _build(name, arch)
    perturb_adapters(model)
    expected = _logits(model)
    lf.save_adapter(model, tmp_path / "a")
    loaded = lf.load_adapter(ARCHS[arch](), tmp_path / "a")
    torch.testing.assert_close(_logits(loaded), expected, atol=1e-6, rtol=1e-6)
    saved = lf.core.checkpoint.adapter_state(model)
    again = lf.core.checkpoint.adapter_state(loaded)
    assert saved.keys() == again.keys()
    for k in saved:
        torch.testing.assert_close(again[k], saved[k], atol=0, rtol=0)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", MEMBER_NAMES)
def test_only_adapter_params_train_and_all_get_gradients(name, arch):
    model, _, _, _ = _build(name, arch)
    perturb_adapters(model)
    model.train()
    adapter_ids = {id(p) for _, p, _, _ in named_adapter_params(model)}
    rec = record(model)
    extra = {id(p) for e in (rec.entries.values() if rec else ()) for p in e.trainable.values()}
    for pname, p in model.named_parameters():
        assert p.requires_grad == (id(p) in adapter_ids or id(p) in extra), pname
    x = _x()
    out = model(x, labels=x)
    out.loss.backward()
    for qual, p, _, _ in named_adapter_params(model):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {qual}"


def _no_lorafam_state(model) -> list[str]:
    return sorted(k for k in vars(model) if k.startswith("lorafam"))


@pytest.mark.parametrize("name", MEMBER_NAMES)
def test_detach_removes_one_adapter_and_restores_base_layers(name):
    """``lf.detach(model, name)``: the other adapter keeps its outputs (merged or not); the last one gives the base
    model back, module for module, with no lorafam state left on it."""
    model, ref, spec, cfg = _build(name, "llama")
    perturb_adapters(model)
    keep_cfg = lf.LoraConfig(rank=2, alpha=4, targets=["q_proj", "o_proj"])
    lf.attach(model, keep_cfg, name="keep")
    assert _no_lorafam_state(model) == ["lorafam"]  # one record, whatever the member keeps at model level
    alone = ARCHS["llama"]()
    if cfg.quantize is not None:
        for path, layer in adapted_layers(model):
            set_base_weight(alone.get_submodule(path), base_weight(layer.base_layer))
    lf.attach(alone, keep_cfg, name="keep")
    perturb_adapters(model, seed=2)  # both adapters non-identity; copy "keep" into the lone model
    state = {n: p for n, p, _, _ in named_adapter_params(model) if ".adapters.keep." in n}
    with torch.no_grad():
        for n, p, _, _ in named_adapter_params(alone):
            p.copy_(state[n])
    if lf.METHODS[lf.MEMBERS[name].method].adapter_cls.mergeable:
        lf.merge(model)  # detach unmerges only the detached adapter
    lf.detach(model, "default")
    assert set(lf.configs(model)) == {"keep"}
    torch.testing.assert_close(_logits(model), _logits(alone), atol=1e-4, rtol=1e-4)
    lf.unmerge(model)
    lf.detach(model, "keep")
    assert not list(adapted_layers(model)) and not lf.configs(model)
    assert _no_lorafam_state(model) == []
    torch.testing.assert_close(_logits(model), _logits(ref), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="no adapter named 'keep'.*attached: \\[\\]"):
        lf.detach(model, "keep")
