"""Data-parallel training with torchrun: process group set-up, rank helpers, and a launcher.

``torchrun --nproc_per_node 2 -m lorafam train my.yaml`` (or ``lorafam train my.yaml --nproc 2``) starts one
process per rank; :func:`setup` reads torchrun's environment and joins the group — gloo on CPU, NCCL on CUDA.
The trainer wraps its loss module in ``DistributedDataParallel`` (adapter gradients are all-reduced; the frozen
base is never communicated), shards every global batch by rank, and lets only rank 0 log and write files.

``fsdp: true`` (or HF's ``fsdp: full_shard``) uses FSDP2 instead: :func:`shard` applies
``torch.distributed.fsdp.fully_shard`` to every decoder block and then to the loss module as the root, so each
rank holds 1/world of every parameter — the frozen base and the adapters alike (FSDP2 shards per parameter, so
frozen and trainable tensors share a block) — and a block's full weights exist only during its forward and
backward. Gradients are reduce-scattered (averaged over ranks, as DDP does), so the numbers equal DDP's and one
process's. :func:`full_parameters` gathers everything for saving; :func:`check_fsdp` refuses what cannot be
sharded, naming why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


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


# -- FSDP2 ---------------------------------------------------------------------------------------------------------
class NotShardableError(ValueError):
    """``fsdp: true`` with a model or member that FSDP2 cannot shard here (the message says why)."""


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (``model.model.layers`` for Llama-style bases)."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and len(module) == n_layers:
            return module
    raise NotShardableError(
        f"fsdp: found no list of {n_layers} decoder blocks in {type(model).__name__} to shard one by one "
        "(FSDP2 here shards transformers models whose config has num_hidden_layers); use DDP (--nproc N)"
    )


def check_fsdp(
    model: nn.Module, callbacks: list[Any], save_strategy: str, save_every: int | None, total: int
) -> None:
    """What FSDP2 runs do not do (yet), refused before any compute:

    - adapters that read parameters of other decoder blocks in their forward (``Adapter.unshardable``; also as a
      mixture's expert): FSDP2 holds only the running block's parameters whole;
    - members whose callbacks read whole parameter or gradient tensors between steps (``Callback.unshardable``):
      each rank holds only its shard there, so the callback would decide differently on each rank;
    - checkpoints during training: the optimizer state is sharded across ranks (the final adapter is written).
    """
    from lorafam.core.adapter import Adapter

    for module in model.modules():
        if isinstance(module, Adapter) and module.unshardable:
            raise NotShardableError(f"fsdp: {type(module).__name__} cannot be sharded block by block: "
                                    f"{module.unshardable}. Use DDP (--nproc N)")  # fmt: skip
    for cb in callbacks:
        if cb.unshardable:
            raise NotShardableError(
                f"fsdp: {cb.name} cannot run on sharded parameters: {cb.unshardable}. Use DDP (--nproc N)"
            )
    if save_every and save_every < total:
        raise NotShardableError(
            f"fsdp: checkpoints during training (save_strategy: {save_strategy}, every {save_every} of {total} "
            "steps) are not written under FSDP2 yet (the optimizer state is sharded across ranks); set "
            "save_strategy: no, or use DDP (--nproc N without fsdp) to checkpoint and resume"
        )


def wrap(runner: nn.Module, model: nn.Module, info: DistInfo, *, fsdp: bool, find_unused: bool) -> nn.Module:
    """The loss module as this job runs it: itself (one process), FSDP2-sharded (``fsdp``), or under DDP."""
    if not info.enabled:
        return runner
    if fsdp:
        return shard(runner, model, info)
    return nn.parallel.DistributedDataParallel(runner, broadcast_buffers=False, find_unused_parameters=find_unused)


def accumulation_context(
    runner: nn.Module, info: DistInfo, fsdp: bool
) -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    """What keeps gradients local during accumulation: DDP's ``no_sync``, FSDP2's sync switch, or None."""
    if not info.enabled:
        return None
    return no_grad_sync(runner) if fsdp else runner.no_sync  # type: ignore[return-value]


def shard(runner: nn.Module, model: nn.Module, info: DistInfo) -> nn.Module:
    """FSDP2: ``fully_shard`` every decoder block of ``model``, then ``runner`` (the loss module holding it) as the
    root, which takes the embeddings, the final norm and the output head. Build the optimizer afterwards: sharding
    replaces every parameter with a sharded one."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not info.enabled:
        return runner
    mesh = init_device_mesh(info.device.type, (info.world,))
    blocks = decoder_blocks(model)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(runner, mesh=mesh)
    if info.is_main:
        print(f"fsdp: FSDP2 sharded {len(blocks)} decoder blocks and the root over {info.world} ranks "
              f"({info.backend})", file=sys.stderr)  # fmt: skip
    return runner


def _fsdp_modules(root: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in root.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_parameters(root: nn.Module) -> Iterator[None]:
    """Every parameter whole on every rank inside the block (a collective: all ranks enter it); a no-op without
    FSDP2. Saving code inside sees plain tensors, exactly as in a single process."""
    mods = _fsdp_modules(root)
    for m in mods:
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()


def no_grad_sync(root: nn.Module) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """The accumulation context for FSDP2 (DDP's ``no_sync``): gradients stay local until the last micro-batch."""

    @contextlib.contextmanager
    def ctx() -> Iterator[None]:
        root.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            root.set_requires_gradient_sync(True)  # type: ignore[operator]

    return ctx


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a DTensor result (e.g. the total gradient norm of sharded gradients)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t
