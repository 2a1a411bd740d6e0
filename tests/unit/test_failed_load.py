"""A failed ``load_adapter`` leaves the model exactly as it was (issue 10, defect 2).

The old error path called ``unload(model)``, which removed every adapter already attached. Each case below
starts from a model that already carries a trained adapter, makes a load fail at a different point (a shape
mismatch half-way through the layers, a tensor missing from the last layer, a missing weights file, a corrupt
safetensors file) and checks every parameter, buffer, module type, adapter list, trainable flag and output.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorafam as lf
from lorafam.core.inject import adapted_layers
from lorafam.family import METHODS
from tests.conftest import perturb_adapters

MEMBERS = ["lora", "dora", "qlora", "longlora", "alora", "adalora", "quantum", "mopeft"]


def _model():
    model = lf.attach(
        lf.tiny_llama(), lf.LoraConfig(rank=2, alpha=4, targets=["q_proj", "down_proj"]), name="keep"
    )
    perturb_adapters(model)
    return model


def _fingerprint(model):
    x = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x).logits.clone()
    return {
        "logits": logits,
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "types": {n: type(m).__name__ for n, m in model.named_modules()},
        "grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "layers": {p: (list(ly.adapters), list(ly.active), list(ly.merged)) for p, ly in adapted_layers(model)},
        "configs": dict(lf.configs(model)),
        "attrs": sorted(k for k in model.__dict__ if k.startswith("lorafam_")),
        "rope": dict(model.config.rope_parameters),
        "training": {n: m.training for n, m in model.named_modules()},
    }


def _assert_same(before, after):
    torch.testing.assert_close(after["logits"], before["logits"], atol=0, rtol=0)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    for key in ("types", "grad", "layers", "configs", "attrs", "rope", "training"):
        assert after[key] == before[key], key


def _saved(tmp_path, member_name, **base_kwargs):
    member = lf.MEMBERS[member_name]
    kwargs = dict(METHODS[member.method].contract_kwargs)
    kwargs.setdefault("targets", "all-linear")
    if member_name == "longlora":
        kwargs["target_context"] = 4096
    src = lf.attach(lf.tiny_llama(**base_kwargs), member.make_config(rank=2, alpha=4, **kwargs))
    perturb_adapters(src)
    lf.save_adapter(src, tmp_path / "a")
    return tmp_path / "a"


@pytest.mark.parametrize("member_name", MEMBERS)
def test_shape_mismatch_half_way_leaves_the_model_as_it_was(tmp_path, member_name):
    path = _saved(tmp_path, member_name, intermediate=96)  # attention fits, the MLP does not
    model = _model()
    before = _fingerprint(model)
    with pytest.raises((ValueError, KeyError)):
        lf.load_adapter(model, path, name="new")
    _assert_same(before, _fingerprint(model))


@pytest.mark.parametrize("member_name", ["lora", "qlora", "longlora"])
def test_missing_tensor_leaves_the_model_as_it_was(tmp_path, member_name):
    path = _saved(tmp_path, member_name)
    weights = load_file(str(path / "adapter_model.safetensors"))
    last = sorted(k for k in weights if ".layers.1." in k)[-1]
    del weights[last]
    save_file(weights, str(path / "adapter_model.safetensors"))
    model = _model()
    before = _fingerprint(model)
    with pytest.raises(KeyError, match="missing"):
        lf.load_adapter(model, path, name="new")
    _assert_same(before, _fingerprint(model))


def test_missing_and_corrupt_files_leave_the_model_as_it_was(tmp_path):
    path = _saved(tmp_path, "lora")
    model = _model()
    before = _fingerprint(model)
    (path / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="cannot read safetensors"):
        lf.load_adapter(model, path, name="new")
    _assert_same(before, _fingerprint(model))
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        lf.load_adapter(model, path, name="new")
    _assert_same(before, _fingerprint(model))


def test_a_good_load_after_a_failed_one_works(tmp_path):
    bad = _saved(tmp_path / "bad", "lora", intermediate=96)
    good = _saved(tmp_path / "good", "lora")
    model = _model()
    with pytest.raises(ValueError):
        lf.load_adapter(model, bad, name="new")
    lf.load_adapter(model, good, name="new")
    assert set(lf.configs(model)) == {"keep", "new"}


def test_a_failed_pissa_load_puts_the_base_weights_back(tmp_path):
    src = lf.attach(lf.tiny_llama(intermediate=96), lf.LoraConfig(rank=2, targets="all-linear", init="pissa"))
    lf.save_adapter(src, tmp_path / "a")  # PiSSA rewrites the base on load; the MLP shapes then fail
    model = _model()
    before = _fingerprint(model)
    with pytest.raises(ValueError):
        lf.load_adapter(model, tmp_path / "a", name="new")
    _assert_same(before, _fingerprint(model))
