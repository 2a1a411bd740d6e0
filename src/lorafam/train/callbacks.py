"""Trainer callbacks: the plug-in points members use (AdaLoRA's rank allocator, mixture balance losses...).

A member contributes callbacks through its adapter class's ``make_callbacks(model, config, total_steps)``;
the trainer asks every attached adapter's class for them, so ``lorafam train`` needs no per-member code.
A user's own loop can call the same hooks in the same order:

    loss = loss + sum(cb.extra_loss(model) for cb in cbs if ...)   # before backward
    loss.backward(); [cb.on_after_backward(step, model) for cb in cbs]
    optimizer.step(); [cb.on_optimizer_step(step, model) for cb in cbs]; optimizer.zero_grad()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Callback:
    """Base class: every hook is optional. ``step`` is the 1-based optimizer step being completed."""

    name: str = "callback"
    unshardable: str | None = None
    """Why this callback cannot run under FSDP2 (``fsdp: true``), or None when it can: a callback that reads whole
    parameter or gradient tensors between steps would see only this rank's shard."""

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        """Once, before the first step (also after a resume)."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the training loss before backward (regularisers, balance losses)."""
        return None

    def on_after_backward(self, step: int, model: nn.Module) -> None:
        """Gradients of the last micro-batch are accumulated; the optimizer has not stepped yet."""

    def on_optimizer_step(self, step: int, model: nn.Module) -> None:
        """After ``optimizer.step()``, before ``zero_grad()`` (gradients still present): AdaLoRA allocates here."""

    def logs(self) -> dict[str, float]:
        """Scalars to add to the step's metrics line."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State needed to resume exactly (saved in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


def callbacks_for(model: nn.Module, total_steps: int) -> list[Callback]:
    """Every callback the attached adapters ask for."""
    from lorafam.core.inject import configs
    from lorafam.family import spec_for_config

    out: list[Callback] = []
    for name, cfg in configs(model).items():
        out.extend(spec_for_config(cfg).adapter_cls.make_callbacks(model, cfg, name, total_steps))
    return out
