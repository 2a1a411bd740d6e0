"""Switching adapters off and on without removing them (``disabled``, ``active_adapters``, ``set_active``), and
counting parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

from lorafam.core.adapter import AdaptedLayer
from lorafam.core.base_layer import is_quantized
from lorafam.core.lookup import adapted_layers, configs
from lorafam.core.saved_modules import SavedModule, saved_modules


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Base behaviour inside the block: adapters off. Merged ones are unmerged for the block and their merged
    weights put back bit for bit after it (no unmerge/merge rounding cycle, so no drift in bf16)."""
    layers = [layer for _, layer in adapted_layers(model)]
    restores = []
    wrappers: list[SavedModule] = []
    try:
        wrappers = [w for _, w in saved_modules(model)]
        for layer in layers:
            restores.append(layer.suspend_merged())
            layer.disabled = True
        for w in wrappers:
            w.disabled = True
        yield model
    finally:
        for layer in layers:
            layer.disabled = False
        for w in wrappers:
            w.disabled = False
        for restore in reversed(restores):
            restore()


def _check_names(model: nn.Module, names: list[str], where: str) -> None:
    known = set(configs(model))
    for n in names:
        if n not in known:
            raise ValueError(f"{where}: no adapter named {n!r}; attached: {sorted(known)}")


@contextlib.contextmanager
def active_adapters(model: nn.Module, names: list[str]) -> Iterator[nn.Module]:
    """Run with only the named adapters active (others kept but skipped). A merged adapter that is not named
    is unmerged for the block (it would otherwise still apply through the weights) and put back exactly after."""
    _check_names(model, names, "active_adapters")
    layers = [layer for _, layer in adapted_layers(model)]
    layers += [w for _, w in saved_modules(model)]  # type: ignore[misc]
    saved = [list(layer.active) for layer in layers]
    restores = []
    try:
        for layer in layers:
            if isinstance(layer, AdaptedLayer):
                restores.append(layer.suspend_merged(keep=list(names)))
                layer.active = [n for n in names if n in layer.adapters]
            else:
                layer.active = [n for n in names if n in layer.copies]
        yield model
    finally:
        for layer, active in zip(layers, saved):
            layer.active = active
        for restore in reversed(restores):
            restore()


def set_active(model: nn.Module, names: list[str]) -> None:
    """Make only the named adapters active. A merged adapter that is not named is unmerged (with a warning, as
    PEFT's ``set_adapter`` does): an inactive adapter must not stay applied through the weights."""
    _check_names(model, names, "set_active")
    unmerged: set[str] = set()
    for _, layer in adapted_layers(model):
        gone = [n for n in layer.merged if n not in names]
        if gone:
            unmerged.update(gone)
            keep = [n for n in layer.merged if n in names]
            layer.unmerge()
            layer.merge(keep)
        layer.active = [n for n in names if n in layer.adapters]
    for _, wrapper in saved_modules(model):
        wrapper.active = [n for n in names if n in wrapper.copies]
    if unmerged:
        import warnings

        warnings.warn(
            f"set_active: unmerged {sorted(unmerged)} (merged adapters that are no longer active)", stacklevel=2
        )


# ---------------------------------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; quantised weights count as their logical number of elements."""
    trainable = total = 0
    seen: set[int] = set()
    for module in model.modules():
        if is_quantized(module) and id(module) not in seen:
            seen.add(id(module))
            total += module.in_features * module.out_features
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def trainable_summary(model: nn.Module, printer: Any = print) -> str:
    """PEFT's line: ``trainable params: X || all params: Y || trainable%: Z``."""
    trainable, total = count_params(model)
    line = f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
    if printer is not None:
        printer(line)
    return line
