"""Adding a member = one file (tests/toy/toy_member.py) + one registry entry, and no other edit: the toy member
then goes through the contract tests, the CLI (``family``, ``train``), checkpoints and the arena plan
(docs/adding-a-member.md)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import lorafam as lf
from lorafam.family import MEMBERS, METHODS, FamilyMember, MethodSpec
from tests.contract import test_adapter_contract as contract
from tests.train_support import base_config, make_tiny_model_dir, reverse_records, write_jsonl


@pytest.fixture
def toy(monkeypatch):
    """The one registry entry (a MethodSpec and a FamilyMember), present for this test only."""
    spec = MethodSpec("toy", "tests.toy.toy_member:ToyConfig", "tests.toy.toy_member:ToyAdapter", "LORAFAM_TOY",
                      False, mixable=True)  # fmt: skip
    member = FamilyMember(name="toy", method="toy", title="A toy rank-one update", authors="Nobody",
                          origin="lorafam tests", year=2026, venue="none", arxiv="0000.00000",
                          idea="ΔW = s · u v from two rank-one factors.", parent="lora")  # fmt: skip
    monkeypatch.setitem(METHODS, "toy", spec)
    monkeypatch.setitem(MEMBERS, "toy", member)
    return "toy"


@pytest.mark.parametrize("arch", list(contract.ARCHS))
def test_the_contract_suite_runs_on_the_toy(toy, arch, tmp_path):
    contract.test_identity_at_init(toy, arch)
    contract.test_disabled_equals_base_and_perturbed_differs(toy, arch)
    contract.test_merge_contract(toy, arch)
    contract.test_save_load_round_trip(tmp_path, toy, arch)
    contract.test_only_adapter_params_train_and_all_get_gradients(toy, arch)
    if arch == "llama":
        contract.test_detach_removes_one_adapter_and_restores_base_layers(toy)


def test_checkpoint_carries_its_own_peft_type_and_reloads_exactly(toy, tmp_path):
    model = lf.attach(lf.tiny_llama(), MEMBERS["toy"].make_config(targets=["q_proj", "v_proj"]))
    with torch.no_grad():
        for _, p, _, _ in lf.core.inject.named_adapter_params(model):
            p.normal_(0, 0.1)
    lf.save_adapter(model, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORAFAM_TOY" and cfg["lorafam_config"]["method"] == "toy"
    loaded = lf.load_adapter(lf.tiny_llama(), tmp_path / "a")
    x = torch.randint(3, 200, (1, 9))
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
    opt = lf.make_optimizer(model, lr=1e-3, loraplus_ratio=4)  # u has role "b": LoRA+ applies with no toy code
    assert sorted({g["lr"] for g in opt.param_groups}) == [1e-3, 4e-3]


def test_cli_lists_and_trains_the_toy(toy, tmp_path, capsys):
    from lorafam.cli import main

    assert main(["family"]) == 0
    assert "toy" in capsys.readouterr().out
    model_dir = make_tiny_model_dir(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", reverse_records(16))
    cfg = base_config(model_dir, data, tmp_path / "out", method="toy", max_steps=2, save_steps=1)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["lorafam_config"]["method"] == "toy"


def test_arena_plans_the_toy_and_a_mixture_takes_it_as_an_expert(toy):
    from lorafam.arena.spec import load_spec, plan

    runs = plan(load_spec(), "quick", members=["toy"], peers=False)
    assert runs and {(e.impl, e.member) for e in runs} == {("lorafam", "toy")}
    assert "toy" in [m.name for m in lf.family()]
    mix = lf.attach(lf.tiny_llama(), lf.MixtureConfig(experts=["lora", "toy"], rank=2))  # mixable=True
    assert type(lf.configs(mix)["default"].experts[1]).method == "toy"
