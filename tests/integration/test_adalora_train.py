"""``lorafam train`` with ``method: adalora``: the allocator runs with no extra wiring, the ranks end at the target
budget, the saved adapter is sliced to the kept triplets, and PEFT loads it with the same outputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import lorafam as lf
from lorafam.cli import main as cli_main
from tests.train_support import make_tiny_model_dir


def _data(root: Path) -> Path:
    rows = [
        {"instruction": "Reverse the words.", "input": f"w{i}, x{i}, y{i}", "output": f"y{i}, x{i}, w{i}"}
        for i in range(24)
    ]
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_with_method_adalora_allocates_ranks_and_saves_for_peft(tmp_path: Path) -> None:
    yaml = tmp_path / "run.yaml"
    yaml.write_text(
        f"""
model_name_or_path: {make_tiny_model_dir(tmp_path)}
method: adalora
method_args: {{init_rank: 6, target_rank: 2, tinit: 1, tfinal: 2}}
lora_alpha: 12
dataset: {_data(tmp_path)}
per_device_train_batch_size: 4
max_steps: 8
learning_rate: 2.0e-3
logging_steps: 1
save_steps: 4
num_threads: 1
output_dir: {tmp_path / "out"}
disable_progress: true
plot_loss: false
"""
    )
    assert cli_main(["train", str(yaml)]) == 0
    result = json.loads((tmp_path / "out" / "train_results.json").read_text())
    assert result["steps"] == 8

    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    budgets = [r["adalora_budget"] for r in rows if "adalora_budget" in r]
    n_matrices = 2 * 7
    assert budgets[0] == 6 * n_matrices  # warm-up: nothing masked yet
    assert budgets[-1] == 2 * n_matrices  # the schedule reached the target
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))  # and never grew back
    assert all(r["adalora_orth_reg"] > 0 for r in rows if "adalora_orth_reg" in r)

    adapter = Path(result["adapter_dir"])
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA" and saved["total_step"] == 8
    assert sum(sum(m) for m in saved["rank_pattern"].values()) == 2 * n_matrices

    base = tmp_path / "tiny-llama"
    ours = lf.load_adapter(lf.load_model(str(base)), adapter)
    ranks = [layer.adapters["default"].rank for _, layer in lf.core.inject.adapted_layers(ours)]
    assert sum(ranks) == 2 * n_matrices and len(set(ranks)) > 1  # unequal ranks: the budget moved
    peft = pytest.importorskip("peft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(lf.load_model(str(base)), adapter).eval()
    x = torch.randint(3, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pm(x).logits, ours(x).logits, atol=1e-5, rtol=1e-5)
