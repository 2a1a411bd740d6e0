"""Two gloo processes under torchrun: identical adapters on both ranks, equal to one process with the same
global batch (to 1e-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from lorafam.train.config import make_config
from lorafam.train.trainer import train
from tests.train_support import base_config, make_tiny_model_dir, reverse_records, write_config, write_jsonl

DRIVER = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import save_file
    from lorafam.core.checkpoint import adapter_state
    from lorafam.train.callbacks import Callback
    from lorafam.train.config import load_config
    from lorafam.train.trainer import train

    class SaveMine(Callback):
        '''Every rank writes its own adapter after the last optimizer step.'''
        def __init__(self, total):
            self.total = total
        def on_optimizer_step(self, step, model):
            if step == self.total:
                rank = torch.distributed.get_rank()
                save_file(adapter_state(model), f"{sys.argv[2]}/rank{rank}.safetensors")

    cfg = load_config(sys.argv[1])
    train(cfg, extra_callbacks=[SaveMine(cfg.max_steps)])
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    model_dir = make_tiny_model_dir(root)
    data = write_jsonl(root / "data.jsonl", reverse_records(40))
    return root, model_dir, data


def test_two_gloo_ranks_match_each_other_and_one_process(setup):
    root, model_dir, data = setup
    common = {
        "max_steps": 5,
        "learning_rate": 1e-3,
        "gradient_accumulation_steps": 2,
        "val_size": 4,
        "eval_steps": 5,
    }
    ddp_cfg = write_config(
        root / "ddp.yaml", **base_config(model_dir, data, root / "ddp", per_device_train_batch_size=2, **common)
    )
    (root / "driver.py").write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / "driver.py"), str(ddp_cfg), str(root)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    r0, r1 = load_file(root / "rank0.safetensors"), load_file(root / "rank1.safetensors")
    assert r0.keys() == r1.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks diverged"
    saved = load_file(root / "ddp" / "adapter_model.safetensors")  # written by rank 0 only
    assert all(torch.equal(saved[k], r0[k]) for k in r0)

    single = train(
        make_config(base_config(model_dir, data, root / "single", per_device_train_batch_size=4, **common))
    )
    ref = load_file(os.path.join(single.adapter_dir, "adapter_model.safetensors"))
    diff = max(float((ref[k] - r0[k]).abs().max()) for k in ref)
    assert diff <= 1e-5, diff
    steps = [json.loads(x)["current_steps"] for x in (root / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 5]  # one writer: each step logged once (+ the eval line)


def test_nproc_flag_relaunches_under_torchrun(monkeypatch, tmp_path):
    from lorafam.train import distributed

    seen = {}
    monkeypatch.setattr(distributed.subprocess, "call", lambda cmd, env: seen.update(cmd=cmd, env=env) or 0)
    from lorafam.cli import main

    cfg = write_config(tmp_path / "c.yaml", dataset="x.jsonl")
    assert main(["train", str(cfg), "lora_rank=4", "--nproc", "2"]) == 0
    assert seen["cmd"][1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert seen["cmd"][6:] == ["lorafam", "train", str(cfg), "lora_rank=4"]
