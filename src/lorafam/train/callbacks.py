"""Trainer callbacks: the plug-in points members use (AdaLoRA's rank allocator, mixture balance losses...).

A member names its callback class in the registry (``MethodSpec.callbacks = "module:Class"``, e.g.
``lorafam.train.adalora_allocator:AdaLoraAllocator``); :func:`callbacks_for` builds one per attached adapter
with :meth:`Callback.for_adapter`, so ``lorafam train`` and the arena need no per-member code. The order of the
hooks is written once, in :func:`lorafam.train.step.optimizer_step`, which a hand-written loop can call too.
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

    @classmethod
    def for_adapter(cls, model: nn.Module, config: Any, name: str, total_steps: int) -> Callback | None:
        """The callback a member's registry entry names (``MethodSpec.callbacks``), for attached adapter ``name``;
        None when it has nothing to do (AdaLoRA on a frozen adapter). Default: ``cls(model, config, name,
        total_steps)``."""
        return cls(model, config, name, total_steps)  # type: ignore[call-arg]

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
    """The callbacks the registry names for the attached adapters (``MethodSpec.callbacks``), in attach order."""
    from lorafam.core.inject import configs
    from lorafam.family import spec_for_config

    out: list[Callback] = []
    for name, cfg in configs(model).items():
        cls = spec_for_config(cfg).callback_cls
        if cls is not None:
            cb = cls.for_adapter(model, cfg, name, total_steps)
            if cb is not None:
                out.append(cb)
    return out
