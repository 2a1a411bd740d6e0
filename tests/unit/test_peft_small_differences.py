"""The smaller silent differences from PEFT (issue 10, defect 12): ``rank_pattern`` keys are one regex group as in
PEFT's ``get_pattern_key``; LoRA+ groups tensor by tensor (learning rate *and* weight decay) equal to PEFT's
``create_loraplus_optimizer``, DoRA's magnitude included; ``loraplus_lr_ratio`` accepted for DoRA in YAML;
``quantization_method: bnb`` says that bitsandbytes is not used."""

from __future__ import annotations

import warnings

import pytest
import torch

import lorafam as lf
from lorafam.core.inject import adapted_layers

peft = pytest.importorskip("peft")
from peft.optimizers import create_loraplus_optimizer  # noqa: E402

PATTERNS = {"(q|v)_proj": 2, "layers\\.1\\.mlp\\.down_proj": 6, "k_proj|o_proj": 3}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]


def _peft(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(lf.tiny_llama(), peft.LoraConfig(target_modules=TARGETS, **kw))


def test_rank_pattern_regex_groups_like_peft(tmp_path):
    pm = _peft(r=4, lora_alpha=8, rank_pattern=PATTERNS, alpha_pattern={"k_proj|o_proj": 12})
    ours = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, alpha=8, targets=TARGETS, rank_pattern=PATTERNS,
                                                    alpha_pattern={"k_proj|o_proj": 12}))  # fmt: skip
    peft_ranks = {n.removeprefix("base_model.model.").removesuffix(".lora_A.default.weight"): p.shape[0]
                  for n, p in pm.named_parameters() if n.endswith("lora_A.default.weight")}  # fmt: skip
    our_ranks = {p: ly.adapters["default"].rank for p, ly in adapted_layers(ours)}
    assert our_ranks == peft_ranks
    assert sorted(set(our_ranks.values())) == [2, 3, 4, 6]  # every pattern took effect
    peft_scale = {
        n: m.scaling["default"]
        for n, m in pm.base_model.model.named_modules()
        if isinstance(getattr(m, "scaling", None), dict)
    }
    assert {p: ly.adapters["default"].scaling for p, ly in adapted_layers(ours)} == peft_scale
    pm.save_pretrained(tmp_path / "p")  # and a PEFT file with these patterns loads with the same ranks
    loaded = lf.load_adapter(lf.tiny_llama(), tmp_path / "p")
    assert {p: ly.adapters["default"].rank for p, ly in adapted_layers(loaded)} == peft_ranks


def _our_name(peft_name: str) -> str:
    n = peft_name.removeprefix("base_model.model.")
    for part in ("lora_A", "lora_B", "lora_magnitude_vector"):
        n = n.replace(f".{part}.default.weight", f".adapters.default.{part}").replace(
            f".{part}.default", f".adapters.default.{part}"
        )
    return n


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_loraplus_groups_tensor_by_tensor_equal_peft(use_dora):
    pm = _peft(r=2, use_dora=use_dora)
    popt = create_loraplus_optimizer(
        pm, torch.optim.AdamW, lr=3e-4, loraplus_lr_ratio=16, loraplus_weight_decay=0.1
    )
    member = lf.DoraConfig if use_dora else lf.LoraConfig
    model = lf.attach(lf.tiny_llama(), member(rank=2, targets=TARGETS))
    opt = lf.make_optimizer(model, lr=3e-4, loraplus_ratio=16, weight_decay=0.1)
    names = {id(p): n for n, p in pm.named_parameters()}
    theirs = {
        _our_name(names[id(p)]): (g["lr"], g["weight_decay"]) for g in popt.param_groups for p in g["params"]
    }
    ours_names = {id(p): n for n, p in model.named_parameters()}
    ours = {ours_names[id(p)]: (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    assert ours == theirs  # same tensors, each with the same lr and weight decay
    if use_dora:
        m = next(k for k in ours if k.endswith("lora_magnitude_vector"))
        assert ours[m] == (3e-4 * 16, 0.1)


def test_yaml_takes_loraplus_ratio_for_dora_and_refuses_it_where_it_does_nothing():
    from lorafam.train.config import make_config

    cfg = make_config({"model_name_or_path": "x", "dataset": "d", "method": "dora", "loraplus_lr_ratio": 16})
    assert cfg.loraplus_lr_ratio == 16
    with pytest.raises(ValueError, match="B factor"):
        make_config({"model_name_or_path": "x", "dataset": "d", "method": "quantum", "loraplus_lr_ratio": 16})
    quantum = lf.attach(lf.tiny_llama(), lf.QuantumConfig(rank=2, targets=["q_proj"]))
    with pytest.raises(ValueError, match="no adapter on this model has a B factor"):
        lf.make_optimizer(quantum, lr=1e-3, loraplus_ratio=16)


def test_quantization_method_bnb_says_bitsandbytes_is_not_used():
    from lorafam.train.config import make_config

    cfg = make_config(
        {"model_name_or_path": "x", "dataset": "d", "quantization_bit": 4, "quantization_method": "bnb"}
    )
    assert any("bitsandbytes is not used" in n for n in cfg.notes)
