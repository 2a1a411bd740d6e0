"""What every implementation's build step hands the arena's loop: the model, its optimizer and its handles.

Both builders (``harness`` for lorafam's members, ``peers`` for the same members through PEFT) import from here,
and the harness imports the peers only to dispatch to them, so the two never import each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lorafam.core.config import AdapterConfig
from lorafam.family import MEMBERS, RunFacts

COMMON_FIELDS = ("rank", "alpha", "dropout", "targets")
"""Settings the arena applies to every member that has the field and does not preset it."""


@dataclass
class Built:
    """A model ready to train, with the handles the probes need."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    callbacks: list[Any] = field(default_factory=list)
    adapter_config: dict[str, Any] = field(default_factory=dict)
    disabled: Callable[[], contextlib.AbstractContextManager] | None = None  # base behaviour, if available
    merge: Callable[[], None] | None = None
    unmerge: Callable[[], None] | None = None
    save: Callable[[str], None] | None = None
    after_backward: Callable[[int], None] | None = None  # PEFT AdaLoRA's update_and_allocate
    mergeable: bool | None = None
    not_mergeable_reason: str = ""
    adapted_bases: list[nn.Module] = field(default_factory=list)


def member_config(member_name: str, settings: dict[str, Any], formatter: Any, steps: int) -> AdapterConfig:
    """The member's config through the registry's one builder (:meth:`FamilyMember.make_config`): the arena's
    :data:`COMMON_FIELDS` as ``common``, ``config_overrides`` as the fields, and the run's facts (steps → AdaLoRA's
    ``total_step``, the assistant header → aLoRA's invocation)."""
    return MEMBERS[member_name].make_config(
        settings.get("config_overrides") or {},
        common={k: settings[k] for k in COMMON_FIELDS if k in settings},
        run=RunFacts(total_steps=steps, assistant_header=list(formatter.assistant_header)),
        where=f"arena member {member_name}",
    )
