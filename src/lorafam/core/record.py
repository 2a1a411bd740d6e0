"""The one record of lorafam's state on a user's model, under one attribute (``model.lorafam``).

Everything an attached adapter adds to the model *outside* its layers lives here, per adapter name, in an
:class:`Entry`:

- ``config``: the adapter's config (what :func:`lorafam.configs` returns);
- ``handles``: things to undo on detach, in reverse order — forward hooks (``RemovableHandle``) or :class:`Undo`
  wrappers around a function (LongLoRA switching the attention back);
- ``trainable``: extra trainable tensors that are not adapter parameters, keyed by their path in the model
  (LongLoRA's embeddings and norms). They train with the adapter, are saved with it under PEFT's
  ``modules_to_save`` convention and loaded back;
- ``aliases``: extra file keys that carry a copy of one of those tensors for PEFT's sake (a tied output head);
  written and listed, skipped on load (ours is the same tensor);
- ``state``: the member's own runtime objects (aLoRA's activation state, the mixture's routing state).

The protocol that checkpointing, injection and the contract tests use: :meth:`ModelRecord.tensors_to_save`,
:meth:`ModelRecord.load_rest`, :meth:`ModelRecord.peft_config` and :meth:`ModelRecord.detach`. Nothing else of
lorafam is set on the model, so a model with no adapter carries no attribute of ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lorafam.core.config import AdapterConfig

RECORD_ATTR = "lorafam"


class Undo:
    """A function to call on detach, with a hook handle's ``remove()`` interface."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def remove(self) -> None:
        self.fn()


@dataclass
class Entry:
    """What one attached adapter keeps at model level (see the module docstring)."""

    config: AdapterConfig
    handles: list[Any] = field(default_factory=list)
    trainable: dict[str, nn.Parameter] = field(default_factory=dict)
    aliases: dict[str, nn.Parameter] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


class ModelRecord:
    """Adapter name → :class:`Entry`, in attach order."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def configs(self) -> dict[str, AdapterConfig]:
        return {name: e.config for name, e in self.entries.items()}

    def entry(self, name: str) -> Entry:
        if name not in self.entries:
            raise ValueError(f"no adapter named {name!r} on this model; attached: {sorted(self.entries)}")
        return self.entries[name]

    # -- the protocol ----------------------------------------------------------------------------------------------
    def tensors_to_save(self, name: str) -> dict[str, Tensor]:
        """Model path → tensor of the adapter's extra trainable tensors (written beside its layer tensors), plus
        their aliases (own storage: safetensors refuses shared tensors)."""
        e = self.entry(name)
        return {**e.trainable, **{k: p.detach().clone() for k, p in e.aliases.items()}}

    def load_rest(self, name: str, remaining: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
        """Copy the adapter's extra tensors out of ``remaining`` (keys ``prefix + path``); returns what is left.

        Raises:
            KeyError / ValueError: a tensor the adapter needs is missing or has another shape (both named).
        """
        rest = dict(remaining)
        for key, p in self.entry(name).trainable.items():
            file_key = f"{prefix}{key}"
            if file_key not in rest:
                raise KeyError(f"adapter file lacks the trained tensor {file_key!r} (modules_to_save)")
            src = rest.pop(file_key)
            if tuple(src.shape) != tuple(p.shape):
                raise ValueError(
                    f"{file_key}: shape {tuple(src.shape)} in the file but {tuple(p.shape)} in the model"
                )
            with torch.no_grad():
                p.copy_(src.to(dtype=p.dtype, device=p.device))
        for key in self.entry(name).aliases:  # PEFT's copy of a tensor we hold once
            rest.pop(f"{prefix}{key}", None)
        return rest

    def peft_config(self, name: str) -> dict[str, Any]:
        """Keys this record adds to the adapter's ``adapter_config.json`` (PEFT's ``modules_to_save``)."""
        keys = [*self.entry(name).trainable, *self.entry(name).aliases]
        if not keys:
            return {}
        return {"modules_to_save": sorted({k.rsplit(".", 1)[0].split(".")[-1] for k in keys})}

    def detach(self, name: str) -> Entry:
        """Undo the adapter's handles (newest first) and forget its entry; returns the entry."""
        entry = self.entry(name)
        for handle in reversed(entry.handles):
            handle.remove()
        entry.handles.clear()
        del self.entries[name]
        return entry


def record(model: nn.Module) -> ModelRecord | None:
    """The model's record, or None when no adapter was ever attached (or all were detached)."""
    rec = model.__dict__.get(RECORD_ATTR)
    return rec if isinstance(rec, ModelRecord) else None


def ensure_record(model: nn.Module) -> ModelRecord:
    """The model's record, created on first use (set without nn.Module's registration: it is not a submodule)."""
    rec = record(model)
    if rec is None:
        rec = ModelRecord()
        object.__setattr__(model, RECORD_ATTR, rec)
    return rec


def drop_if_empty(model: nn.Module) -> None:
    """Remove the attribute once the last adapter is gone."""
    rec = record(model)
    if rec is not None and not rec.entries:
        object.__delattr__(model, RECORD_ATTR)


def entry(model: nn.Module, name: str) -> Entry:
    """The :class:`Entry` of adapter ``name`` on ``model`` (ValueError naming the attached ones otherwise)."""
    rec = record(model)
    if rec is None:
        raise ValueError(f"no adapter named {name!r} on this model; attached: []")
    return rec.entry(name)
