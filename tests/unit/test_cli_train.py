"""The CLI verbs owned by the trainer: help, train, preprocess --debug, estimate, generate, chat, merge."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import lorafam as lf
from lorafam.cli import main
from tests.train_support import base_config, make_tiny_model_dir, reverse_records, write_config, write_jsonl

VERBS = ["train", "preprocess", "generate", "chat", "merge", "estimate", "quickstart"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = make_tiny_model_dir(root)
    data = write_jsonl(root / "data.jsonl", reverse_records(24))
    cfg = write_config(root / "cfg.yaml", **base_config(model_dir, data, root / "run", max_steps=3))
    assert main(["train", str(cfg)]) == 0
    return root, model_dir, data, cfg


@pytest.mark.parametrize("verb", VERBS)
def test_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert "usage: lorafam " + verb in capsys.readouterr().out


def test_train_writes_the_run(setup):
    root = setup[0]
    assert (root / "run" / "adapter_model.safetensors").is_file()
    assert "lora_rank: 4" in (root / "run" / "run_config.yaml").read_text()


def test_train_config_error_names_the_key(setup, capsys):
    assert main(["train", str(setup[3]), "lora_rnak=4"]) == 2
    assert "unknown key 'lora_rnak'" in capsys.readouterr().err


def test_train_missing_dataset_names_the_file(setup, capsys):
    root = setup[0]
    assert main(["train", str(setup[3]), f"dataset={root}/missing.jsonl", f"output_dir={root}/m"]) == 1
    assert "file not found" in capsys.readouterr().err


def test_train_refuses_an_output_dir_holding_a_run(setup, capsys):
    assert main(["train", str(setup[3])]) == 1
    err = capsys.readouterr().err
    assert "is not empty" in err and "overwrite_output_dir" in err
    assert (setup[0] / "run" / "adapter_model.safetensors").is_file()  # nothing lost


def test_print_config(setup, capsys):
    assert main(["train", str(setup[3]), "lora_r=6", "--print-config"]) == 0
    assert "lora_rank: 6" in capsys.readouterr().out


def test_preprocess_debug_shows_tokens_and_mask(setup, capsys):
    assert main(["preprocess", str(setup[3]), "--debug", "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "24 records (alpaca: 24)" in out
    assert "-100 (masked)" in out and "'<|im_end|>'" in out


def test_estimate_from_yaml_and_preset(setup, capsys):
    assert main(["estimate", str(setup[3]), "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["total"] > est["weights"] > 0
    assert main(["estimate", "--model", "llama2-70b", "--quantization-bit", "4", "--json"]) == 0
    big = json.loads(capsys.readouterr().out)
    assert 33 < big["weights"] < 40  # 69B params at ~4.1 bits + fp32/bf16 embeddings
    assert main(["estimate", "--model", "gpt5"]) == 1


def _args(**kw) -> argparse.Namespace:
    base = {"model": None, "adapter": None, "max_new_tokens": 4, "temperature": 0.0, "system": None,
            "ignore_base_mismatch": False, "device": None, "top_p": None, "top_k": None,
            "repetition_penalty": None, "stop": [], "seed": None}  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_generate_and_chat_with_an_adapter(setup, capsys):
    from lorafam.commands import chat, generate

    root, model_dir = setup[0], setup[1]
    a = _args(model=str(model_dir), adapter=str(root / "run"), prompt="hello", raw=False)
    assert generate.run(a) == 0
    lines = iter(["hi there", "/reset", "again", "/exit"])
    assert chat.run(_args(model=str(model_dir), adapter=str(root / "run")), input_fn=lambda _: next(lines)) == 0
    assert capsys.readouterr().out.count("assistant> ") == 2


def test_adapter_from_another_base_is_refused(setup, tmp_path, capsys):
    root = setup[0]
    other = make_tiny_model_dir(tmp_path, seed=1)  # same shapes, different base
    assert main(["generate", "hi", "--model", str(other), "--adapter", str(root / "run")]) == 1
    err = capsys.readouterr().err
    assert "trained on base" in err and "--ignore-base-mismatch" in err
    assert main(["merge", "--model", str(other), "--adapter", str(root / "run"),
                 "--output", str(tmp_path / "m")]) == 1  # fmt: skip
    assert not (tmp_path / "m").exists()


def test_adapter_with_other_shapes_is_refused_even_when_forced(setup, tmp_path, capsys):
    import lorafam as lf

    tok = lf.load_tokenizer()
    odd = tmp_path / "odd"
    lf.tiny_llama(vocab_size=len(tok), hidden=48, layers=2, heads=4, kv_heads=2).save_pretrained(odd)
    tok.save_pretrained(odd)
    code = main(["generate", "hi", "--model", str(odd), "--adapter", str(setup[0] / "run"),
                 "--ignore-base-mismatch"])  # fmt: skip
    assert code == 1
    assert "different base model" in capsys.readouterr().err


def test_merge_writes_a_plain_model_with_the_same_outputs(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    root, model_dir = setup[0], setup[1]
    out = tmp_path / "merged"
    assert main(["merge", "--model", str(model_dir), "--adapter", str(root / "run"),
                 "--output", str(out)]) == 0  # fmt: skip
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ref = lf.load_adapter(lf.load_model(str(model_dir)), root / "run")
    x = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, ref(x).logits, atol=1e-5, rtol=1e-5)
    assert (out / "tokenizer.json").is_file()
    assert (
        main(["merge", "--model", str(model_dir), "--adapter", str(root / "run"), "--output", str(out)]) == 1
    )  # fmt: skip  (exists; --force needed)


@pytest.mark.slow
def test_quickstart_runs_on_the_default_model(tmp_path, capsys):
    code = main(
        ["quickstart", "--steps", "2", "--eval-items", "2", "--show", "1", "--output-dir", str(tmp_path / "q")]
    )
    assert code == 0
    assert "exact match on 2 held-out items: base" in capsys.readouterr().out
    assert (tmp_path / "q" / "adapter_model.safetensors").is_file()
