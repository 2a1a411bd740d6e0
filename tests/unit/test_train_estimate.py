"""The memory estimate: sane on named presets, and within ±30% of a measured peak on the real default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lorafam.train.estimate import PRESETS, estimate_memory


def test_weights_at_their_bits():
    full = estimate_memory("llama2-7b", quantization_bit=16, bf16=True, batch_size=1, seq_len=16)
    nf4 = estimate_memory("llama2-7b", quantization_bit=4, batch_size=1, seq_len=16)
    assert 12.3 < full.weights < 12.7  # 6.74e9 params × 2 bytes
    assert 3.3 < nf4.weights < 4.2  # linears at 4.125 bits, embeddings in fp32
    assert nf4.total < full.total


def test_adapter_gradients_and_optimizer_scale_with_rank():
    a = estimate_memory("llama2-7b", rank=8)
    b = estimate_memory("llama2-7b", rank=16)
    assert b.trainable_params == 2 * a.trainable_params == 2 * 19_988_480
    assert b.optimizer == pytest.approx(2 * b.gradients)


def test_activations_grow_with_tokens_and_shrink_with_checkpointing():
    a = estimate_memory("llama2-70b", quantization_bit=4, batch_size=1, seq_len=1024)
    b = estimate_memory("llama2-70b", quantization_bit=4, batch_size=2, seq_len=1024)
    c = estimate_memory("llama2-70b", quantization_bit=4, batch_size=2, seq_len=1024, gradient_checkpointing=True)
    assert b.activations == pytest.approx(2 * a.activations, rel=0.01)
    assert c.activations < b.activations / 5


def test_presets_and_errors(tmp_path):
    assert {"llama2-7b", "llama2-70b", "smollm2-135m"} <= set(PRESETS)
    with pytest.raises(ValueError, match="not a preset"):
        estimate_memory("gpt-17")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(ValueError, match="missing 'num_attention_heads'"):
        estimate_memory(str(tmp_path))


MEASURE = """
import json, resource, sys
from lorafam.train.config import load_config
from lorafam.train.trainer import train
train(load_config(sys.argv[1]))
print(json.dumps({"peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}))
"""


@pytest.mark.slow
def test_estimate_is_within_30_percent_of_the_measured_peak(tmp_path):
    """Train SmolLM2-135M (LoRA r=16, batch 2 × 384 — not the calibration shape) for 2 steps in a fresh
    process; compare peak RSS."""
    from lorafam.train.config import load_config
    from lorafam.train.estimate import estimate_for_config
    from tests.train_support import write_config, write_jsonl

    rows = [{"text": " ".join(["word"] * 500) + f" {i}"} for i in range(2)]  # 2 rows truncated to 384 tokens
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg_path = write_config(
        tmp_path / "c.yaml",
        dataset=str(data), lora_rank=16, cutoff_len=384, per_device_train_batch_size=2, max_steps=2,
        save_steps=0, output_dir=str(tmp_path / "run"), disable_progress=True, plot_loss=False,
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", MEASURE, str(cfg_path)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_gib"]
    est = estimate_for_config(load_config(cfg_path)).total
    print(f"estimate {est:.2f} GiB, measured peak RSS {measured:.2f} GiB, ratio {est / measured:.2f}")
    assert 0.7 * measured <= est <= 1.3 * measured, f"estimate {est:.2f} GiB vs measured {measured:.2f} GiB"
