"""Bad input to the core gets a clear error naming the key, file or module; nothing on disk is lost."""

from __future__ import annotations

import json

import pytest
import torch

import lorafam as lf
from lorafam.core import checkpoint
from tests.conftest import perturb_adapters


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"rank": 0}, "rank"),
        ({"rank": -2}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"targets": []}, "targets"),
        ({"quantize": "int3"}, "quantize"),
    ],
)
def test_bad_config_values_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        lf.LoraConfig(**kwargs)


def test_unknown_config_key_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown key 'rnak'.*Did you mean 'rank'"):
        lf.LoraConfig.from_dict({"method": "lora", "rnak": 4})


def test_targets_matching_nothing_list_adaptable_names():
    with pytest.raises(ValueError, match=r"matched no module.*q_proj.*v_proj"):
        lf.attach(lf.tiny_llama(), lf.LoraConfig(targets=["qproj"]))


def test_regex_targets_and_exclude():
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(targets=r".*layers\.0\.self_attn\.(q|v)_proj", rank=2))
    assert sorted(p for p, _ in lf.core.inject.adapted_layers(model)) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
    ]
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(targets="all-linear", exclude=["down_proj"], rank=2))
    paths = [p for p, _ in lf.core.inject.adapted_layers(model)]
    assert len(paths) == 12 and not any(p.endswith("down_proj") for p in paths)
    assert not any("lm_head" in p for p in paths)


def test_duplicate_adapter_name():
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2))
    with pytest.raises(ValueError, match="already attached"):
        lf.attach(model, lf.LoraConfig(rank=2))


def test_two_named_adapters_and_selection():
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2), name="a")
    lf.attach(model, lf.DoraConfig(rank=2), name="b")
    perturb_adapters(model)
    x = torch.randint(3, 256, (1, 8))
    with torch.no_grad():
        both = model(x).logits
        with lf.active_adapters(model, ["a"]):
            only_a = model(x).logits
        with lf.active_adapters(model, []):
            none = model(x).logits
        with lf.disabled(model):
            base = model(x).logits
    assert not torch.allclose(both, only_a) and not torch.allclose(only_a, none)
    torch.testing.assert_close(none, base)


def test_shape_mismatch_on_load_names_module_and_file(tmp_path):
    model = lf.attach(lf.tiny_llama(hidden=64), lf.LoraConfig(rank=2, targets=["q_proj"]))
    lf.save_adapter(model, tmp_path / "a")
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors.*q_proj.*different base"):
        lf.load_adapter(lf.tiny_llama(hidden=32, intermediate=64), tmp_path / "a")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lf.load_adapter(lf.tiny_llama(), tmp_path / "nothing")
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2, targets=["q_proj"]))
    lf.save_adapter(model, tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        lf.load_adapter(lf.tiny_llama(), tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        lf.load_adapter(lf.tiny_llama(), tmp_path / "a")
    (tmp_path / "a" / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickled weights are not loaded"):
        lf.load_adapter(lf.tiny_llama(), tmp_path / "a")


def test_unsupported_peft_type_lists_supported(tmp_path):
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2, targets=["q_proj"]))
    lf.save_adapter(model, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["peft_type"] = "VERA"
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"peft_type 'VERA'.*Supported peft_type values: .*LORA"):
        lf.load_adapter(lf.tiny_llama(), tmp_path / "a")


def test_unknown_peft_keys_are_ignored_with_a_warning(tmp_path):
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2, targets=["q_proj"]))
    perturb_adapters(model)
    lf.save_adapter(model, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["some_future_peft_key"] = 3
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="some_future_peft_key"):
        loaded = lf.load_adapter(lf.tiny_llama(), tmp_path / "a")
    x = torch.randint(3, 256, (1, 8))
    torch.testing.assert_close(loaded(x).logits, model(x).logits)


def test_interrupted_save_keeps_the_previous_adapter(tmp_path, monkeypatch):
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2, targets=["q_proj"]))
    perturb_adapters(model)
    lf.save_adapter(model, tmp_path / "a")
    before = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    perturb_adapters(model, seed=7)
    with pytest.raises(KeyboardInterrupt):
        lf.save_adapter(model, tmp_path / "a")
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a"], "temporary folder left behind"


def test_merge_and_unload_gives_a_plain_savable_model(tmp_path):
    from transformers import AutoModelForCausalLM

    model = lf.attach(lf.tiny_llama(), lf.DoraConfig(rank=2))
    perturb_adapters(model)
    x = torch.randint(3, 256, (1, 8))
    expected = model(x).logits
    plain = lf.merge_and_unload(model)
    plain.save_pretrained(tmp_path / "merged")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(again(x).logits, expected, atol=1e-5, rtol=1e-5)
    assert "lorafam" not in vars(plain)  # no record of ours left


def test_trainable_summary_format():
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2, targets=["q_proj"]))
    line = lf.trainable_summary(model, printer=None)
    trainable, total = lf.core.inject.count_params(model)
    assert (
        line
        == f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
    )
    assert trainable == 2 * (2 * 64 + 64 * 2)


def test_loaded_adapter_is_frozen_unless_asked(tmp_path):
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2, targets=["q_proj"]))
    lf.save_adapter(model, tmp_path / "a")
    frozen = lf.load_adapter(lf.tiny_llama(), tmp_path / "a")
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = lf.load_adapter(lf.tiny_llama(), tmp_path / "a", trainable=True)
    names = {n for n, p in trainable.named_parameters() if p.requires_grad}
    assert names and all(".adapters.default." in n for n in names)


def test_adapter_follows_the_model_mode():
    model = lf.tiny_llama().eval()
    lf.attach(model, lf.LoraConfig(rank=2, dropout=0.5, targets=["q_proj"]))
    assert not any(m.training for m in model.modules()), "dropout active in an eval-mode model"
    x = torch.randint(3, 256, (1, 8))
    perturb_adapters(model)
    torch.testing.assert_close(model(x).logits, model(x).logits)
