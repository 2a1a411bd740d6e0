"""PEFT's ``modules_to_save`` (the head, the embeddings; tied and untied) for every member, both ways
(issue 10, defect 3). LLaMA-Factory's ``additional_target`` writes exactly these files.

PEFT's semantics, kept: each listed module becomes the adapter's own trainable copy (untied from a tied twin),
the copy runs while the adapter is active, the original when adapters are disabled, and the file stores the
copy under the module's own key.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import lorafam as lf
from lorafam.family import METHODS
from tests.conftest import perturb_adapters

peft = pytest.importorskip("peft")

X = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))
SAVE = {"head": ["lm_head"], "embed": ["embed_tokens"], "both": ["lm_head", "embed_tokens"]}
TARGETS = ["q_proj", "v_proj"]


def _tiny(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg).eval()


def saved_modules(model):
    """The modules_to_save wrappers (found by type name, so this file also runs against older code)."""
    return [(p, m) for p, m in model.named_modules() if type(m).__name__ == "SavedModule"]


def _logits(model):
    with torch.no_grad():
        return model(X).logits


def _perturb_copies(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modules_to_save" in name or ".copies." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _peft_config(member: str, save: list[str]):
    common = {
        "target_modules": TARGETS,
        "modules_to_save": save,
        "init_lora_weights": False,
        "task_type": "CAUSAL_LM",
    }
    if member == "adalora":
        return peft.AdaLoraConfig(init_r=4, target_r=2, total_step=10, lora_alpha=8, **common)
    extra = {"use_dora": True} if member == "dora" else {}
    if member == "alora":
        extra = {"alora_invocation_tokens": [154, 28]}
    return peft.LoraConfig(r=4, lora_alpha=8, **common, **extra)


PEFT_MEMBERS = ["lora", "dora", "adalora", "alora"]


@pytest.mark.parametrize("save", list(SAVE))
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("member", PEFT_MEMBERS)
def test_peft_saves_lorafam_loads(tmp_path, member, tied, save):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(_tiny(tied), _peft_config(member, SAVE[save])).eval()
    _perturb_copies(pm)
    expected = _logits(pm)
    pm.save_pretrained(tmp_path / "peft")
    ours = lf.load_adapter(_tiny(tied), tmp_path / "peft")
    assert sorted(p for p, _ in saved_modules(ours)) == sorted(
        {"head": ["lm_head"], "embed": ["model.embed_tokens"], "both": ["lm_head", "model.embed_tokens"]}[save]
    )
    torch.testing.assert_close(_logits(ours), expected, atol=1e-5, rtol=1e-5)
    with lf.disabled(ours):
        torch.testing.assert_close(_logits(ours), _logits(_tiny(tied)), atol=1e-6, rtol=1e-6)


def _ours(member: str, tied: bool, save: list[str]):
    spec = METHODS[lf.MEMBERS[member].method]
    kwargs = {**spec.contract_kwargs, "targets": TARGETS}
    model = lf.attach(_tiny(tied), lf.MEMBERS[member].make_config(rank=4, alpha=8, modules_to_save=save, **kwargs))
    perturb_adapters(model)
    _perturb_copies(model)
    return model


@pytest.mark.parametrize("save", list(SAVE))
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("member", ["lora", "rslora", "dora", "adalora", "alora"])
def test_lorafam_saves_peft_loads(tmp_path, member, tied, save):
    model = _ours(member, tied, SAVE[save])
    expected = _logits(model)
    lf.save_adapter(model, tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(_tiny(tied), tmp_path / "ours").eval()
    torch.testing.assert_close(_logits(pm), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("member", list(lf.MEMBERS))
def test_every_member_round_trips_with_modules_to_save(tmp_path, member, tied):
    model = _ours(member, tied, SAVE["both"])
    expected = _logits(model)
    assert (expected - _logits(_ours(member, tied, None))).abs().max() > 1e-3  # the copies matter
    lf.save_adapter(model, tmp_path / "a")
    again = lf.load_adapter(_tiny(tied), tmp_path / "a")
    assert lf.configs(again)["default"].modules_to_save == ["embed_tokens", "lm_head"] or lf.configs(again)[
        "default"
    ].modules_to_save == ["lm_head", "embed_tokens"]
    torch.testing.assert_close(_logits(again), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_copies_train_and_the_original_stays(tied):
    model = _ours("lora", tied, SAVE["head"])
    base = _tiny(tied)
    head = model.lm_head
    assert type(head).__name__ == "SavedModule" and head.original_module.weight.requires_grad is False
    assert head.copies["default"].weight.requires_grad
    opt = lf.make_optimizer(model, lr=1e-2)
    assert any(head.copies["default"].weight is p for g in opt.param_groups for p in g["params"])
    before = head.copies["default"].weight.detach().clone()
    model.train()
    model(X, labels=X).loss.backward()
    opt.step()
    assert not torch.equal(head.copies["default"].weight, before)
    torch.testing.assert_close(head.original_module.weight, base.lm_head.weight, atol=0, rtol=0)
    if tied:  # the embeddings keep the original tied weight, as in PEFT (ensure_weight_tying=False)
        assert model.model.embed_tokens.weight is head.original_module.weight


def test_unload_and_merge_and_unload(tmp_path):
    model = _ours("lora", False, SAVE["both"])
    merged_logits = _logits(model)
    copy_head = model.lm_head.copies["default"]
    lf.merge_and_unload(model)
    assert model.lm_head is copy_head and not list(saved_modules(model))
    torch.testing.assert_close(_logits(model), merged_logits, atol=1e-5, rtol=1e-5)
    other = _ours("lora", False, SAVE["both"])
    lf.unload(other)
    assert not list(saved_modules(other)) and type(other.lm_head) is torch.nn.Linear
    torch.testing.assert_close(_logits(other), _logits(_tiny(False)), atol=0, rtol=0)


def test_two_adapters_each_with_its_own_head():
    model = _tiny(False)
    lf.attach(model, lf.LoraConfig(rank=2, targets=TARGETS, modules_to_save=["lm_head"]), name="a")
    lf.attach(model, lf.LoraConfig(rank=2, targets=TARGETS, modules_to_save=["lm_head"]), name="b")
    _perturb_copies(model)
    perturb_adapters(model)
    with lf.active_adapters(model, ["a"]):
        only_a = _logits(model)
    with lf.active_adapters(model, ["b"]):
        only_b = _logits(model)
    assert not torch.allclose(only_a, only_b)
    lf.set_active(model, ["a"])
    torch.testing.assert_close(_logits(model), only_a, atol=0, rtol=0)


def test_unknown_module_name_is_refused():
    with pytest.raises(ValueError, match=r"modules_to_save: 'lm_haed' matches no module.*lm_head"):
        lf.attach(_tiny(False), lf.LoraConfig(rank=2, targets=TARGETS, modules_to_save=["lm_haed"]))
    with pytest.raises(ValueError, match="modules_to_save"):
        lf.LoraConfig(modules_to_save="lm_head")
