"""``lorafam train`` with QLoRA (``quantization_bit: 4``) and LongLoRA (``method: longlora``): the trainer builds
the NF4 base / switches to S²-Attn with no extra wiring, trains, and the saved adapter reloads as it trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lorafam as lf
from lorafam.quant.nf4 import NF4Linear

trainer = pytest.importorskip("lorafam.train.trainer")
config_mod = pytest.importorskip("lorafam.train.config")


def _tiny_model_dir(root: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = lf.load_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    path = root / "tiny"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _train(tmp_path: Path, extra: str, name: str):
    rows = [{"instruction": "Reverse the words.", "input": f"w{i}, x{i}, y{i}", "output": f"y{i}, x{i}, w{i}"}
            for i in range(16)]  # fmt: skip
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml = tmp_path / f"{name}.yaml"
    yaml.write_text(
        f"""
model_name_or_path: {_tiny_model_dir(tmp_path)}
{extra}
lora_rank: 4
lora_alpha: 8
dataset: {data}
per_device_train_batch_size: 4
max_steps: 4
learning_rate: 2.0e-3
logging_steps: 1
save_steps: 4
num_threads: 1
output_dir: {tmp_path / name}
disable_progress: true
plot_loss: false
"""
    )
    cfg = config_mod.load_config(yaml, [])
    if "longlora" in name:  # the model the trainer builds runs S²-Attn (in training mode)
        from lorafam.attention.s2attn import ATTN_NAME
        from lorafam.train.build import build_model

        assert build_model(cfg)[0].config._attn_implementation == ATTN_NAME
    return trainer.train(cfg)


def test_train_qlora_with_quantization_bit_4(tmp_path: Path) -> None:
    result = _train(tmp_path, "method: lora\nquantization_bit: 4", "qlora")
    assert result.steps == 4 and all(torch.isfinite(torch.tensor(loss)) for _, loss in result.loss_curve)
    saved = json.loads((Path(result.adapter_dir) / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["lorafam_config"]["quantize"] == "nf4"
    model = lf.load_adapter(lf.load_model(tmp_path / "tiny"), result.adapter_dir)
    assert any(isinstance(m, NF4Linear) for m in model.modules())


def test_train_longlora_uses_s2attn(tmp_path: Path) -> None:
    result = _train(
        tmp_path,
        "method: longlora\nlora_target: q_proj,k_proj,v_proj,o_proj\nmethod_args: {group_size_ratio: 0.25}",
        "longlora",
    )
    assert result.steps == 4 and result.loss_curve[-1][1] < result.loss_curve[0][1]
    saved = json.loads((Path(result.adapter_dir) / "adapter_config.json").read_text())
    assert saved["lorafam_config"]["method"] == "longlora" and "embed_tokens" in saved["modules_to_save"]
    model = lf.load_adapter(lf.load_model(tmp_path / "tiny"), result.adapter_dir)
    assert isinstance(lf.configs(model)["default"], lf.LongLoraConfig)
