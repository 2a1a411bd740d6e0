"""``method: mopeft`` and ``method: quantum`` through the trainer: the balance loss is collected and the router
statistics logged and saved with no extra wiring; a trained Quantum-PEFT adapter exports to plain LoRA for PEFT."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

import lorafam as lf
from lorafam.export import export_lora
from tests.train_support import make_tiny_model_dir

trainer = pytest.importorskip("lorafam.train.trainer")
config_mod = pytest.importorskip("lorafam.train.config")


def _run(tmp_path: Path, method: str, method_args: str, steps: int = 4):
    rows = [
        {"instruction": "Reverse the words.", "input": f"w{i}, x{i}, y{i}", "output": f"y{i}, x{i}, w{i}"}
        for i in range(16)
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml = tmp_path / f"{method}.yaml"
    yaml.write_text(
        f"""
model_name_or_path: {make_tiny_model_dir(tmp_path)}
method: {method}
method_args: {method_args}
lora_rank: 4
lora_alpha: 8
dataset: {data}
per_device_train_batch_size: 4
max_steps: {steps}
learning_rate: 2.0e-3
logging_steps: 1
save_steps: {steps}
num_threads: 1
output_dir: {tmp_path / method}
disable_progress: true
plot_loss: false
"""
    )
    result = trainer.train(config_mod.load_config(yaml, []))
    metrics = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    return result, metrics


def test_train_mopeft_collects_balance_loss_and_logs_router_stats(tmp_path: Path) -> None:
    result, metrics = _run(tmp_path, "mopeft", "{experts: [lora, dora, quantum], top_k: 2}")
    assert result.steps == 4
    logged = [r for r in metrics if "router/default/balance" in r]
    assert logged, f"no router statistics in metrics.jsonl: {sorted(metrics[0])}"
    for r in logged:
        assert math.isfinite(r["router/default/balance"]) and r["router/default/balance"] >= 1.0 - 1e-6
        gates = [r[f"router/default/e{i}_{m}"] for i, m in enumerate(["lora", "dora", "quantum"])]
        assert all(0.0 <= g <= 1.0 for g in gates) and sum(gates) <= 1.0 + 1e-6  # top-2, not renormalised
        assert "router/default/L00/e0" in r and "router/default/L01/e2" in r
    loaded = lf.load_adapter(lf.load_model(str(tmp_path / "tiny-llama")), result.adapter_dir)
    stats = lf.router_stats(loaded)
    assert len(stats) == 14 and all(len(v) == 3 and 0 < sum(v) <= 1 + 1e-6 for v in stats.values())


def test_train_quantum_then_export_for_peft(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    result, metrics = _run(tmp_path, "quantum", "{layers: 1}")
    assert result.steps == 4 and math.isfinite(result.final_loss)
    model = lf.load_adapter(lf.load_model(str(tmp_path / "tiny-llama")), result.adapter_dir)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith(".lam"))  # λ moved off 0
    x = torch.randint(3, 1000, (2, 10))
    with torch.no_grad():
        expected = model(x).logits
    export_lora(model, tmp_path / "lora")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(lf.load_model(str(tmp_path / "tiny-llama")), tmp_path / "lora").eval()
    with torch.no_grad():
        torch.testing.assert_close(pm(x).logits, expected, atol=1e-5, rtol=1e-5)
