"""The registry holds the facts, and they agree with the code they describe (family.py: METHODS, MEMBERS)."""

from __future__ import annotations

import dataclasses

import pytest

import lorafam as lf
from lorafam.core.adapter import Adapter
from lorafam.core.config import AdapterConfig
from lorafam.family import MEMBERS, METHODS, RunFacts, TrainDefaults
from lorafam.train.callbacks import Callback


@pytest.mark.parametrize("key", list(METHODS))
def test_method_spec_matches_its_classes(key):
    spec = METHODS[key]
    assert spec.key == key
    assert issubclass(spec.config_cls, AdapterConfig) and spec.config_cls.method == key
    assert issubclass(spec.adapter_cls, Adapter)
    if spec.callbacks is not None:
        assert issubclass(spec.callback_cls, Callback)
    cfg = spec.config_cls(**{**MEMBERS_OF[key][0].preset, **spec.contract_kwargs})
    assert cfg.peft_type == spec.peft_type == cfg.to_peft()["peft_type"]  # peft_type is stored once
    assert not hasattr(spec.config_cls, "__dataclass_fields__") or "peft_type" not in {
        f.name for f in dataclasses.fields(spec.config_cls)
    }


MEMBERS_OF = {k: [m for m in MEMBERS.values() if m.method == k] for k in METHODS}


def test_every_method_has_a_member_and_every_member_a_method():
    assert all(MEMBERS_OF[k] for k in METHODS)
    assert all(m.method in METHODS for m in MEMBERS.values())


@pytest.mark.parametrize("name", list(MEMBERS))
def test_member_facts(name):
    m = MEMBERS[name]
    assert m.name == name and (m.parent is None or m.parent in MEMBERS)
    fields = set(METHODS[m.method].config_cls.field_names())
    assert set(m.preset) <= fields, f"{name}: preset keys that are not config fields"
    assert isinstance(m.train, TrainDefaults)
    if m.dora_variant is not None:
        assert METHODS[MEMBERS[m.dora_variant].method].config_cls.__name__.startswith("Dora")
    cfg = m.make_config(**METHODS[m.method].contract_kwargs)
    for key, value in m.preset.items():
        assert getattr(cfg, key) == value or key == "experts"  # experts are resolved into configs


def test_peft_files_are_claimed_by_exactly_one_member():
    """``accepts_peft`` is a declared hook: for a member's own PEFT dict exactly one config class says yes (files
    that carry ``lorafam_config`` are read from it, whatever PEFT's view)."""
    from lorafam.core.checkpoint import config_from_peft

    for key, spec in METHODS.items():
        cfg = spec.config_cls(**{**MEMBERS_OF[key][0].preset, **spec.contract_kwargs})
        d = {**cfg.to_peft(), "target_modules": ["q_proj"]}
        if not spec.peft_compatible:  # save_adapter writes the full config for our own peft_types
            d["lorafam_config"] = cfg.to_dict()
        if "lorafam_config" in d:
            assert type(config_from_peft(d)) is spec.config_cls
            continue
        claimed = [k for k, s in METHODS.items() if s.config_cls.accepts_peft(d)]
        assert claimed == [key], (key, claimed)
        assert type(config_from_peft(d)) is spec.config_cls


@pytest.mark.parametrize("key", [k for k, s in METHODS.items() if s.mixable])
def test_mixable_members_build_as_experts(key):
    member = MEMBERS_OF[key][0].name
    model = lf.attach(lf.tiny_llama(), lf.MixtureConfig(experts=["lora", member], rank=2))
    assert "default" in lf.configs(model)


@pytest.mark.parametrize("key", [k for k, s in METHODS.items() if not s.mixable])
def test_unmixable_members_are_refused_by_the_fact(key):
    member = MEMBERS_OF[key][0].name
    with pytest.raises(ValueError, match="cannot be a mixture expert|unknown member"):
        lf.MixtureConfig(experts=["lora", {"member": member, **METHODS[key].contract_kwargs}])


def test_loraplus_fact_drives_the_trainer_check():
    from lorafam.train.config import ConfigError, make_config

    for name, m in MEMBERS.items():
        if METHODS[m.method].loraplus:
            assert make_config({"method": name, "loraplus_lr_ratio": 4}).loraplus_lr_ratio == 4
        else:
            with pytest.raises(ConfigError, match="loraplus_lr_ratio"):
                make_config({"method": name, "loraplus_lr_ratio": 4})


def test_make_config_precedence_and_run_facts():
    ada = MEMBERS["adalora"]
    assert ada.make_config().init_rank == 12  # class default
    assert ada.make_config(run=RunFacts(total_steps=30)).total_step == 30
    assert ada.make_config({"total_step": 7}, run=RunFacts(total_steps=30)).total_step == 7  # caller wins
    al = MEMBERS["alora"].make_config(run=RunFacts(assistant_header=[5, 6]))
    assert al.invocation_tokens == [5, 6]
    assert MEMBERS["qlora"].make_config({"rank": 3}).quantize == "nf4"  # preset < caller, preset kept
    with pytest.raises(ValueError, match=r"member lora \(LoraConfig\): unknown key 'rnak'.*Did you mean 'rank'"):
        MEMBERS["lora"].make_config({"rnak": 3})


def test_make_config_common_settings_apply_only_where_the_member_has_them_and_does_not_preset_them():
    # the arena's shared settings: lower than the preset, ignored by a config without the field, below the caller
    common = {"rank": 4, "quantize": None, "init_rank": 99}
    q = MEMBERS["qlora"].make_config(common=common)
    assert (q.rank, q.quantize) == (4, "nf4")
    assert MEMBERS["adalora"].make_config({"init_rank": 6}, common=common).init_rank == 6
    assert MEMBERS["adalora"].make_config(common=common).init_rank == 99
    assert MEMBERS["lora"].make_config({"rank": 2}, common=common).rank == 2


def test_a_mixable_member_can_still_refuse_a_config_through_its_declared_hook():
    # AdapterConfig.mixture_problem (None by default); LoRA refuses a base-rewriting init and per-module patterns
    assert lf.LoraConfig().mixture_problem() is None and lf.QuantumConfig().mixture_problem() is None
    with pytest.raises(ValueError, match=r"experts\[1\]: init='pissa' rewrites the shared base weights"):
        lf.MixtureConfig(experts=["lora", {"member": "lora", "init": "pissa"}])
    with pytest.raises(ValueError, match=r"experts\[0\]: rank_pattern / alpha_pattern are not supported"):
        lf.MixtureConfig(experts=[{"member": "dora", "rank_pattern": {"q_proj": 2}}])
