"""Training checkpoints: ``checkpoint-<step>/`` folders that resume a run exactly.

Layout (Hugging Face Trainer's names):

    checkpoint-<step>/
      adapter_config.json, adapter_model.safetensors   the adapter, PEFT layout (loadable on its own)
      optimizer.pt, scheduler.pt                       optimizer and LR-schedule state
      rng_state_<rank>.pth                             torch / CUDA / python / numpy RNG states, one per rank
      callbacks.pt                                     each callback's state_dict (AdaLoRA's allocator...)
      trainer_state.json                               step, epoch, data position, tokens seen, loss history

The folder is written under a temporary name and renamed into place, so a run killed at any moment leaves only
complete checkpoints; ``trainer_state.json`` is written last and :func:`latest_checkpoint` also requires it.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from lorafam.core.checkpoint import adapter_state, atomic_write_dir, read_adapter_weights, save_adapter
from lorafam.core.inject import configs

STATE_NAME = "trainer_state.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    out = []
    root = Path(output_dir)
    if not root.is_dir():
        return []
    for p in root.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_dir() and (p / STATE_NAME).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1][1] if found else None


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    callbacks_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    save_total_limit: int | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically, then drop the oldest beyond ``save_total_limit``."""
    final = Path(output_dir) / f"checkpoint-{step}"

    def write(tmp: Path) -> None:
        if configs(model):
            save_adapter(model, tmp)  # replaces the (empty) temporary folder with the adapter files
        else:  # method: full / freeze — the trainable base parameters themselves
            save_file(_trainable_state(model), str(tmp / TRAINABLE_NAME))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(callbacks_state, tmp / "callbacks.pt")
        for rank, state in enumerate(rng_states):
            torch.save(state, tmp / f"rng_state_{rank}.pth")
        (tmp / STATE_NAME).write_text(json.dumps(trainer_state, indent=2) + "\n")

    atomic_write_dir(final, write)
    if save_total_limit:
        for _, old in checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


TRAINABLE_NAME = "trainable.safetensors"  # method: full / freeze checkpoints: the trainable base parameters


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    file = path / TRAINABLE_NAME
    if not file.is_file():
        raise ValueError(f"{path}: not a full/freeze fine-tuning checkpoint ({TRAINABLE_NAME} missing)")
    state = load_file(str(file))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(state) != expected:
        raise ValueError(f"{path}: the checkpoint's trainable parameters do not match this run's model/config")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def _load_adapter_checkpoint(model: nn.Module, path: Path) -> None:
    from lorafam.core.checkpoint import load_adapter_state

    state = read_adapter_weights(path)
    expected = set(adapter_state(model))
    if set(state) != expected:
        missing = sorted(expected - set(state))[:4]
        extra = sorted(set(state) - expected)[:4]
        raise ValueError(
            f"{path}: the checkpoint's adapter does not match this run's model/config "
            f"(missing {missing}, unexpected {extra}); was it written by a different config?"
        )
    with torch.no_grad():
        load_adapter_state(model, state, "default", source=str(path))


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore adapter (or trainable base parameters), optimizer, scheduler and this rank's RNG; returns
    ``(trainer_state, callbacks_state)``."""
    path = Path(path)
    if not (path / STATE_NAME).is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint ({STATE_NAME} missing)")
    if configs(model):
        _load_adapter_checkpoint(model, path)
    else:
        _load_trainable(model, path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng_state_{rank}.pth"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    cb_file = path / "callbacks.pt"
    cb_state = torch.load(cb_file, weights_only=False) if cb_file.is_file() else {}
    return json.loads((path / STATE_NAME).read_text()), cb_state
