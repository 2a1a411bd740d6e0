"""TrainConfig: YAML + overrides, the alias table, unknown keys, conflicts, and the adapter config it builds."""

from __future__ import annotations

import pytest

from lorafam.train.config import ConfigError, load_config, make_config, parse_overrides
from tests.train_support import write_config


def test_yaml_and_dotted_overrides(tmp_path):
    path = write_config(
        tmp_path / "c.yaml", lora_rank=8, dataset="a.jsonl,b.jsonl", method_args={"init": "gaussian"}
    )
    cfg = load_config(path, ["lora_rank=16", "learning_rate=3e-4", "method_args.use_rslora=true"])
    assert cfg.lora_rank == 16
    assert cfg.learning_rate == pytest.approx(3e-4)
    assert cfg.dataset == ["a.jsonl", "b.jsonl"]
    assert cfg.method_args == {"init": "gaussian", "use_rslora": True}


def test_parse_overrides_rejects_missing_equals():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["lora_rank"])


def test_axolotl_aliases_map_to_canonical_names():
    cfg = make_config(
        {
            "base_model": "x",
            "lora_r": 4,
            "lora_target_modules": ["q_proj", "v_proj"],
            "train_on_inputs": True,
            "sample_packing": True,
            "micro_batch_size": 3,
            "num_epochs": 2,
            "sequence_len": 256,
            "val_set_size": 0.1,
            "lr_scheduler": "cosine",
        }
    )
    assert (cfg.model_name_or_path, cfg.lora_rank, cfg.lora_target) == ("x", 4, ["q_proj", "v_proj"])
    assert cfg.train_on_prompt and cfg.packing
    assert (cfg.per_device_train_batch_size, cfg.num_train_epochs, cfg.cutoff_len) == (3, 2, 256)
    assert cfg.val_size == pytest.approx(0.1) and cfg.lr_scheduler_type == "cosine"


def test_override_of_an_alias_wins_over_the_file(tmp_path):
    path = write_config(tmp_path / "c.yaml", lora_r=4)
    assert load_config(path, ["lora_rank=12"]).lora_rank == 12


def test_alias_and_canonical_with_different_values_conflict():
    with pytest.raises(ConfigError, match="'lora_r' and 'lora_rank'"):
        make_config({"lora_r": 4, "lora_rank": 8})


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    path = write_config(tmp_path / "c.yaml", lerning_rate=1e-4)
    with pytest.raises(ConfigError, match="unknown key 'lerning_rate'.*Did you mean 'learning_rate'"):
        load_config(path)


def test_unknown_method_lists_members():
    with pytest.raises(ConfigError, match="member: unknown member 'lorra'.*Did you mean 'lora'"):
        make_config({"method": "lorra"})


def test_max_steps_and_epochs_conflict():
    with pytest.raises(ConfigError, match="'max_steps' and 'num_train_epochs' are both set"):
        make_config({"max_steps": 10, "num_train_epochs": 2})


def test_qlora_with_8_bit_conflicts():
    with pytest.raises(ConfigError, match="'adapter: qlora' needs 4-bit.*'quantization_bit' is 8"):
        make_config({"adapter": "qlora", "quantization_bit": 8})
    assert make_config({"adapter": "qlora"}).quantization_bit == 4


def test_quantization_bit_8_is_refused():
    with pytest.raises(ConfigError, match="quantization_bit"):
        make_config({"quantization_bit": 8})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_llamafactory_fixed_keys_are_accepted_or_refused():
    make_config({"stage": "sft", "do_train": True, "report_to": "none"})
    with pytest.raises(ConfigError, match="stage='dpo' is not supported"):
        make_config({"stage": "dpo"})


def test_targets_and_adapter_config():
    from lorafam.methods.dora import DoraConfig
    from lorafam.methods.lora import LoraConfig
    from lorafam.train.build import adapter_config, loraplus_ratio

    cfg = make_config({"lora_target": "all", "lora_rank": 4})
    acfg = adapter_config(cfg)
    assert isinstance(acfg, LoraConfig) and acfg.targets == "all-linear" and acfg.alpha == 8.0
    assert make_config({"lora_target": "q_proj,v_proj"}).targets() == ["q_proj", "v_proj"]
    assert make_config({"lora_target": "q_proj"}).targets() == ["q_proj"]
    assert isinstance(adapter_config(make_config({"use_dora": True})), DoraConfig)
    assert adapter_config(make_config({"use_rslora": True})).use_rslora
    assert adapter_config(make_config({"method": "rslora"})).use_rslora
    assert loraplus_ratio(make_config({"method": "loraplus"})) == 16.0
    assert loraplus_ratio(make_config({"loraplus_lr_ratio": 4})) == 4.0
    assert adapter_config(make_config({"quantization_bit": 4})).quantize == "nf4"


def test_method_args_unknown_field_names_the_class():
    from lorafam.train.build import adapter_config

    with pytest.raises(
        ConfigError, match=r"method_args \(LoraConfig, member: lora\): unknown field 'use_rslor'.*'use_rslora'"
    ):
        adapter_config(make_config({"method_args": {"use_rslor": True}}))


def test_use_dora_with_another_member_is_refused():
    with pytest.raises(ConfigError, match="'use_dora' is only valid with member: lora"):
        make_config({"method": "rslora", "use_dora": True})


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = make_config({"lora_rank": 4, "dataset": "x.jsonl", "method_args": {"init": "gaussian"}})
    path = tmp_path / "r.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_member_defaults_survive_unless_the_yaml_sets_the_generic_keys(tmp_path):
    """Issue 10 item 11: the trainer's generic defaults used to overwrite the member's (AdaLoRA trained at init
    rank 8, LongLoRA on every linear layer). Only keys the user set reach the member config."""
    from lorafam.train.build import adapter_config

    ada = adapter_config(make_config({"method": "adalora"}))
    assert (ada.init_rank, ada.rank, ada.alpha) == (12, 12, 16.0)
    longlora = adapter_config(make_config({"method": "longlora"}))
    assert longlora.targets == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert adapter_config(make_config({"method": "lora"})).rank == 8  # the class default, as before
    set_ = adapter_config(make_config({"method": "adalora", "lora_rank": 6, "lora_target": "q_proj"}))
    assert (set_.init_rank, set_.alpha, set_.targets) == (6, 12.0, ["q_proj"])  # alpha = 2 × rank (LLaMA-Factory)
    path = tmp_path / "run.yaml"
    path.write_text(make_config({"method": "adalora"}).to_yaml())  # the run_config.yaml of such a run
    assert adapter_config(load_config(path)).init_rank == 12
