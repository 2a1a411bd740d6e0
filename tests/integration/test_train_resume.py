"""Kill a real training process with SIGKILL mid-run, resume it, and get the uninterrupted run's adapter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorafam.core.checkpoint import read_adapter_weights
from tests.train_support import base_config, make_tiny_model_dir, reverse_records, write_config, write_jsonl

STEPS = 30


def _cmd(cfg: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "lorafam", "train", str(cfg), *overrides]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model_dir = make_tiny_model_dir(root)
    data = write_jsonl(root / "data.jsonl", reverse_records(64))
    keys = base_config(model_dir, data, root / "unused", max_steps=STEPS, save_steps=3, learning_rate=1e-3,
                       lora_dropout=0.1, lr_scheduler_type="cosine", warmup_steps=2, val_size=4, eval_steps=5)  # fmt: skip
    return root, write_config(root / "cfg.yaml", **keys)


def test_sigkill_then_resume_equals_uninterrupted(setup):
    root, cfg = setup
    ref_dir, run_dir = root / "ref", root / "killed"
    subprocess.run(_cmd(cfg, f"output_dir={ref_dir}"), env=_env(), check=True, capture_output=True)

    # start the same run, wait until it has written checkpoint-6, then SIGKILL it mid-step
    proc = subprocess.Popen(_cmd(cfg, f"output_dir={run_dir}"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not (run_dir / "checkpoint-6" / "trainer_state.json").is_file():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the run never reached checkpoint-6"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "adapter_model.safetensors").exists(), "the run finished before it could be killed"

    out = subprocess.run(_cmd(cfg, f"output_dir={run_dir}", "resume_from_checkpoint=true"), env=_env(),
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stderr

    a = read_adapter_weights(ref_dir)
    b = read_adapter_weights(run_dir)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    ref = json.loads((ref_dir / "train_results.json").read_text())
    res = json.loads((run_dir / "train_results.json").read_text())
    assert res["loss_curve"] == ref["loss_curve"] and res["eval_curve"] == ref["eval_curve"]
