"""Data-parallel training with torchrun: process group set-up, rank helpers, and a launcher.

``torchrun --nproc_per_node 2 -m lorafam train my.yaml`` (or ``lorafam train my.yaml --nproc 2``) starts one
process per rank; :func:`setup` reads torchrun's environment and joins the group — gloo on CPU, NCCL on CUDA.
The trainer wraps its loss module in ``DistributedDataParallel`` (adapter gradients are all-reduced; the frozen
base is never communicated), shards every global batch by rank, and lets only rank 0 log and write files.

FSDP2 (GPUs): for bases too large to replicate, ``torch.distributed.fsdp.fully_shard`` applied per decoder block
and then to the root shards parameters one block at a time; adapters are ordinary parameters inside each block,
so LoRA needs nothing special. It is documented (``docs/trainer.md``) but not wired into ``lorafam train`` yet.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process stands in the job (``world == 1`` for a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op without ``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if world <= 1:
        return DistInfo(device=torch.device(device or ("cuda" if want_cuda else "cpu")))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if want_cuda else "gloo"
    if want_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev, backend=backend)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (identity in a single process)."""
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's value on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch(nproc: int, argv: list[str]) -> int:
    """Re-run ``python -m lorafam <argv>`` under torchrun with ``nproc`` processes on this machine."""
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or nproc) // nproc)))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "lorafam",
        *argv,
    ]
    return subprocess.call(cmd, env=env)
