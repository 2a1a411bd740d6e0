"""Foreign keys (LLaMA-Factory, HF TrainingArguments, axolotl): honoured, accepted with a note, or refused with the
reason; "did you mean" only for near misses; the small CLI things (--version, env, help epilogs, overrides)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorafam.helpers import closest
from lorafam.train.config import SCHEDULERS, ConfigError, make_config
from lorafam.train.foreign import FOREIGN
from lorafam.train.keys import NEAR_MISS

ROOT = Path(__file__).resolve().parents[2]


def test_harmless_llamafactory_keys_are_accepted_with_a_note_each():
    keys = {
        "trust_remote_code": True,
        "preprocessing_num_workers": 16,
        "dataloader_num_workers": 4,
        "save_only_model": False,
        "ddp_timeout": 180000000,
        "loraplus_lr_embedding": 1e-6,  # LoRA+'s embedding group: no member adapts an embedding layer
    }
    cfg = make_config(keys)
    assert len(cfg.notes) == 6
    for key in keys:
        assert any(n.startswith(f"{key} (") and "is ignored:" in n for n in cfg.notes), key


def test_unrelated_keys_get_no_misleading_suggestion():
    # the old cutoff (0.5) suggested lora_rank for flash_attn, seed for deepspeed, base_model for save_only_model
    valid = ["lora_rank", "seed", "base_model", "learning_rate"]
    assert closest("flash_attn", valid, cutoff=NEAR_MISS) == ""
    assert closest("deepspeed", valid, cutoff=NEAR_MISS) == ""
    assert closest("save_only_model", valid, cutoff=NEAR_MISS) == ""
    assert closest("lerning_rate", valid, cutoff=NEAR_MISS) == " Did you mean 'learning_rate'?"
    with pytest.raises(ConfigError) as info:
        make_config({"flash_atn_mode": "x"})
    assert "Did you mean" not in str(info.value) and "unknown key 'flash_atn_mode'" in str(info.value)


def test_known_foreign_keys_with_a_value_that_changes_results_are_refused_with_the_reason():
    with pytest.raises(
        ConfigError, match=r"push_to_hub=True \(HF TrainingArguments\) cannot be honoured here: nothing"
    ):
        make_config({"push_to_hub": True})
    make_config({"push_to_hub": False})
    with pytest.raises(ConfigError, match="shift_attn=True.*member: longlora"):
        make_config({"shift_attn": True})
    with pytest.raises(ConfigError, match=r"fp16=True.*use bf16: true"):
        make_config({"fp16": True})
    with pytest.raises(ConfigError, match="stage='dpo' is not supported here.*DPO, KTO"):
        make_config({"stage": "dpo", "pref_beta": 0.1})


def test_axolotl_spellings_are_translated():
    cfg = make_config(
        {
            "base_model": "m",
            "adapter": "lora",
            "lora_target_linear": True,
            "load_in_4bit": True,
            "optimizer": "adamw",
            "datasets": [{"path": "a.jsonl", "type": "alpaca"}, {"path": "b.jsonl", "type": "chat_template"}],
            "wandb_project": "x",
        }
    )
    assert (cfg.model_name_or_path, cfg.lora_target, cfg.quantization_bit) == ("m", "all", 4)
    assert cfg.dataset == ["a.jsonl", "b.jsonl"] and any("Weights & Biases" in n for n in cfg.notes)
    with pytest.raises(ConfigError, match=r"datasets\[0\].type='oasst'"):
        make_config({"datasets": [{"path": "a", "type": "oasst"}]})


def test_alias_clash_names_both_spellings():
    with pytest.raises(ConfigError, match="'optim' and 'optimizer' are the same setting"):
        make_config({"optim": "adamw", "optimizer": "sgd"})


def test_every_transformers_scheduler_name_is_known():
    from transformers import SchedulerType

    assert set(SCHEDULERS) == {s.value for s in SchedulerType}


def test_hf_optim_names_are_checked():
    with pytest.raises(ConfigError, match="optim='paged_adamw_8bit' is not supported here .*bitsandbytes"):
        make_config({"optim": "paged_adamw_8bit"})
    with pytest.raises(ConfigError, match="optim='adamw_torh'.*Did you mean 'adamw_torch'"):
        make_config({"optim": "adamw_torh"})


def test_report_to_other_services_are_refused():
    with pytest.raises(ConfigError, match="report_to='wandb' is not supported here"):
        make_config({"report_to": "wandb"})


def test_foreign_table_entries_are_well_formed():
    for key, f in FOREIGN.items():
        assert f.kind in ("alias", "note", "refuse", "map"), key
        if f.kind in ("note", "refuse"):
            assert f.why, key
        if f.kind == "alias":
            from lorafam.train.config import TrainConfig

            assert f.target in TrainConfig.model_fields, key


# -- CLI -----------------------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "lorafam", *args], capture_output=True, text=True, env=env)


def test_version_and_env():
    from lorafam import __version__

    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"lorafam {__version__}"
    env = _cli("env", "--json")
    info = json.loads(env.stdout)
    assert info["lorafam"] == __version__ and isinstance(info["bf16_fast_on_cpu"], bool)
    assert info["torch"] and info["device"] in ("cpu", "cuda")


def test_missing_config_does_not_call_overrides_required():
    out = _cli("train")
    assert out.returncode == 2
    assert "required: config" in out.stderr and "overrides" not in out.stderr.split("error:")[1]


def test_every_verb_has_help_with_examples():
    from lorafam.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for verb in COMMANDS:
        text = sub.choices[verb].format_help()
        assert "examples:" in text and f"lorafam {verb}" in text, verb
    assert "examples:" in parser.format_help()


def test_import_works_without_fcntl(tmp_path):
    code = (
        "import sys; sys.modules['fcntl'] = None\n"  # as on Windows: importing fcntl raises ImportError
        "import lorafam\n"
        "from lorafam.models import _lock\n"
        f"with _lock(__import__('pathlib').Path({str(tmp_path / 'x.lock')!r})): print('locked')\n"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("locked")


def test_package_data_globs_all_match_files():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lorafam"]
    for pattern in data:
        assert list((ROOT / "src" / "lorafam").glob(pattern)), f"package-data entry {pattern!r} matches nothing"


def test_cli_docs_cover_every_verb():
    from lorafam.cli import COMMANDS

    text = (ROOT / "docs" / "cli.md").read_text()
    for verb in COMMANDS:
        assert f"`lorafam {verb}" in text, verb
