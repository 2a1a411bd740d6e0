"""FSDP2 (``fsdp: true``) on CPU: ``lorafam train CONFIG --nproc 2`` shards every decoder block and the root over
two gloo processes; the adapter rank 0 writes and every step's loss equal one process with the same global batch,
and DDP's (to 1e-5). What FSDP2 cannot do here is refused by name before any compute."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from lorafam.cli import main
from lorafam.train.config import make_config
from lorafam.train.trainer import TrainingError, train
from tests.train_support import base_config, make_tiny_model_dir, reverse_records, write_config, write_jsonl

COMMON = {"max_steps": 4, "learning_rate": 1e-3, "gradient_accumulation_steps": 2, "val_size": 5, "eval_steps": 2,
          "lora_target": "all", "max_grad_norm": 1.0}  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    return root, make_tiny_model_dir(root), write_jsonl(root / "data.jsonl", reverse_records(40))


def _run_two(root, model_dir, data, name, **extra):
    cfg = write_config(
        root / f"{name}.yaml",
        **base_config(model_dir, data, root / name, per_device_train_batch_size=2, **COMMON, **extra),
    )
    os.environ["OMP_NUM_THREADS"] = "1"
    assert main(["train", str(cfg), "--nproc", "2"]) == 0, f"{name}: the torchrun job failed"
    return root / name


def _losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r], [r["eval_loss"] for r in rows if "eval_loss" in r]


def test_fsdp_two_ranks_equal_one_process_and_ddp(setup, monkeypatch, capfd):
    root, model_dir, data = setup
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    fsdp = _run_two(root, model_dir, data, "fsdp", fsdp="full_shard")
    assert "fsdp: FSDP2 sharded 2 decoder blocks and the root over 2 ranks (gloo)" in capfd.readouterr().err
    ddp = _run_two(root, model_dir, data, "ddp")
    single = train(make_config(base_config(model_dir, data, root / "single", per_device_train_batch_size=4,
                                           **COMMON)))  # fmt: skip

    got = load_file(fsdp / "adapter_model.safetensors")  # gathered from the shards, written by rank 0
    ref = load_file(os.path.join(single.adapter_dir, "adapter_model.safetensors"))
    ddp_w = load_file(ddp / "adapter_model.safetensors")
    assert got.keys() == ref.keys() == ddp_w.keys()
    assert all(got[k].shape == ref[k].shape for k in ref), "the saved adapter is a shard, not the whole tensor"
    assert max(float((ref[k] - got[k]).abs().max()) for k in ref) <= 1e-5
    assert max(float((ddp_w[k] - got[k]).abs().max()) for k in ref) <= 1e-5
    assert any(float((ref[k]).abs().max()) > 0 for k in ref if "lora_B" in k), "training did not move B"

    (f_loss, f_eval), (d_loss, d_eval) = _losses(fsdp), _losses(ddp)
    s_loss = [v for _, v in single.loss_curve]
    assert len(f_loss) == 4 and len(f_eval) == 2
    assert torch.allclose(torch.tensor(f_loss), torch.tensor(s_loss), atol=1e-5)
    assert torch.allclose(torch.tensor(f_loss), torch.tensor(d_loss), atol=1e-5)
    assert torch.allclose(torch.tensor(f_eval), torch.tensor(d_eval), atol=1e-5)
    assert torch.allclose(torch.tensor(f_eval), torch.tensor([v for _, v in single.eval_curve]), atol=1e-5)


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("adalora", r"fsdp: adalora cannot run on sharded parameters: its rank allocator"),
        ("quantum", r"fsdp: QuantumAdapter cannot be sharded block by block: the Pauli bank"),
        ("mopeft", r"fsdp: QuantumAdapter cannot be sharded"),  # the default experts include Quantum-PEFT
    ],
)
def test_fsdp_refuses_members_that_cannot_be_sharded(setup, monkeypatch, member, message):
    """Checked in one rank of a (fake) two-process job: the refusals come before the model is sharded."""
    from lorafam.train import distributed

    root, model_dir, data = setup
    monkeypatch.setattr(distributed, "setup", lambda device=None: distributed.DistInfo(rank=0, world=2))
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, info: obj)
    cfg = base_config(model_dir, data, root / f"no-{member}", method=member, fsdp=True, **COMMON)
    with pytest.raises(TrainingError, match=message):
        train(make_config(cfg))


def test_fsdp_refuses_intermediate_checkpoints(setup, monkeypatch):
    from lorafam.train import distributed

    root, model_dir, data = setup
    monkeypatch.setattr(distributed, "setup", lambda device=None: distributed.DistInfo(rank=0, world=2))
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, info: obj)
    ckpt = base_config(model_dir, data, root / "ckpt", fsdp=True, save_steps=2, **COMMON)
    with pytest.raises(TrainingError, match=r"save_strategy: no"):
        train(make_config(ckpt))


def test_fsdp_values():
    assert make_config({"dataset": "x.jsonl", "fsdp": "full_shard"}).fsdp is True
    with pytest.raises(Exception, match="shard_grad_op, hybrid_shard and offload are not implemented"):
        make_config({"dataset": "x.jsonl", "fsdp": "shard_grad_op"})
