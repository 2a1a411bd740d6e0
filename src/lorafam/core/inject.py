"""Injection: find target layers, wrap them, freeze the rest; merge, unmerge, unload, disable."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from lorafam.core.adapter import AdaptedLayer, Adapter, Conv1D, base_shape, is_quantized, set_module
from lorafam.core.config import AdapterConfig
from lorafam.core.record import Entry, drop_if_empty, ensure_record, record
from lorafam.core.saved_modules import SavedModule, attach_copies, detach_copies, saved_modules


# ---------------------------------------------------------------------------------------------------------------
def _output_head_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if head is not None and module is head or name.split(".")[-1] in ("lm_head", "score", "classifier"):
            names.add(name)
    return names


def adaptable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer an adapter can sit on: Linear, GPT-2 Conv1D, quantised linears, already-adapted layers.

    The output head is excluded. Paths are the user-visible module paths (an adapted layer's own path, not its
    ``base_layer`` child).
    """
    heads = _output_head_names(model)
    found: dict[str, nn.Module] = {}
    skip_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        if isinstance(module, AdaptedLayer):
            found[name] = module
            skip_prefixes.append(name + ".")
            continue
        if isinstance(module, SavedModule):  # a modules_to_save copy is trained whole, never adapted
            skip_prefixes.append(name + ".")
            continue
        if name in heads:
            continue
        if isinstance(module, nn.Linear) or (Conv1D and isinstance(module, Conv1D)) or is_quantized(module):
            found[name] = module
    return found


def match_targets(names: list[str], targets: list[str] | str, exclude: list[str] | None = None) -> list[str]:
    """PEFT's rule: a list entry matches a name equal to it or ending with ".entry"; a string is a full regex;
    "all-linear" matches every adaptable layer."""
    if targets == "all-linear":
        picked = list(names)
    elif isinstance(targets, str):
        pattern = re.compile(targets)
        picked = [n for n in names if pattern.fullmatch(n)]
    else:
        picked = [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]
    if exclude:
        picked = [n for n in picked if not any(n == e or n.endswith("." + e) for e in exclude)]
    return picked


def configs(model: nn.Module) -> dict[str, AdapterConfig]:
    """Adapter name → config for every adapter attached to ``model`` (in attach order)."""
    rec = record(model)
    return rec.configs() if rec is not None else {}


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, AdaptedLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, AdaptedLayer):
            yield name, module


# ---------------------------------------------------------------------------------------------------------------
def attach(model: nn.Module, config: AdapterConfig, name: str = "default", trainable: bool = True) -> nn.Module:
    """Attach one adapter (any family member) to ``model`` in place and return the model.

    Everything except the new adapter's parameters is frozen when ``trainable`` (the default).

    Raises:
        ValueError: the targets match no layer (the message lists the adaptable module names), or an adapter
            with this name already exists.
    """
    from lorafam.family import spec_for_config

    spec = spec_for_config(config)
    existing = configs(model)
    if name in existing:
        raise ValueError(f"an adapter named {name!r} is already attached; pick another name")
    layers = adaptable_layers(model)
    picked = match_targets(list(layers), config.targets, config.exclude)
    if not picked:
        suffixes = sorted({n.split(".")[-1] for n in layers})
        raise ValueError(
            f"targets={config.targets!r} matched no module of {type(model).__name__}. "
            f"Adaptable module names (suffixes): {', '.join(suffixes)}"
        )
    adapter_cls = spec.adapter_cls
    quantized_now = False
    done: list[tuple[str, nn.Module, AdaptedLayer]] = []  # (path, module found there, adapted layer)
    try:
        for path in picked:
            found = layers[path]
            layer = found if isinstance(found, AdaptedLayer) else None
            if layer is None:
                base = found
                if config.quantize == "nf4" and not is_quantized(base):
                    from lorafam.quant.nf4 import quantize_base

                    base = quantize_base(base, compute_dtype=config.compute_dtype)
                    quantized_now = True
                layer = AdaptedLayer(base)
                set_module(model, path, layer)
            done.append((path, found, layer))
            layer.add_adapter(name, _build_on(layer, adapter_cls, config, path))
    except Exception:  # leave the model as it was: no half-attached adapter
        for path, found, layer in reversed(done):
            if name in layer.adapters:
                layer.remove_adapter(name)
            if layer is not found:
                set_module(model, path, found)
        raise
    if config.quantize == "nf4":  # QLoRA quantises the whole base, whatever the adapter targets
        quantized_now = _quantize_rest(model, config.compute_dtype) or quantized_now
    if quantized_now:  # drop every reference to the float weights (and the file they were mapped from)
        from lorafam.quant.nf4 import release_float_weights

        del layers
        release_float_weights(model)
    ensure_record(model).entries[name] = Entry(config)
    try:
        if config.modules_to_save:
            attach_copies(model, config.modules_to_save, name)
        adapter_cls.on_attach(model, config, name)
    except Exception:
        detach(model, name)
        raise
    if trainable:
        mark_trainable(model, [name])
    else:  # inference (PEFT's is_trainable=False): base and new adapter frozen, other adapters keep their flags
        keep = [
            p for n, p, _, _ in named_adapter_params(model) if p.requires_grad and f".adapters.{name}." not in n
        ]
        keep += [
            p
            for _, wrapper in saved_modules(model)
            for other, twin in wrapper.copies.items()
            if other != name
            for p in twin.parameters()
            if p.requires_grad
        ]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in keep:
            p.requires_grad_(True)
    return model


def _quantize_rest(model: nn.Module, compute_dtype: str) -> bool:
    """NF4 for every linear layer not yet quantised, except the output head (embeddings are not linear layers):
    what bitsandbytes' ``load_in_4bit`` and PEFT's QLoRA recipe do, so targeting only q/v still stores the MLPs
    in 4 bits. Returns whether anything was quantised."""
    from lorafam.quant.nf4 import quantize_base

    changed = False
    for path, layer in adaptable_layers(model).items():
        if isinstance(layer, AdaptedLayer) or is_quantized(layer):
            continue
        set_module(model, path, quantize_base(layer, compute_dtype=compute_dtype))
        changed = True
    return changed


def _build_on(layer: AdaptedLayer, adapter_cls: type[Adapter], config: AdapterConfig, path: str) -> Adapter:
    """The adapter for one layer: resolved rank/alpha, on the base's device, initialised from the base."""
    in_f, out_f = base_shape(layer.base_layer)
    rank, alpha = config.rank_alpha_for(path)
    adapter = make_adapter(adapter_cls, config, in_f, out_f, rank, alpha, path)
    adapter.to(device=_reference_param(layer.base_layer).device)
    adapter.init_from_base(layer.base_layer)
    adapter.train(layer.base_layer.training)  # follow the model's mode (no dropout in an eval-mode model)
    return adapter


def make_adapter(
    adapter_cls: type[Adapter],
    config: AdapterConfig,
    in_f: int,
    out_f: int,
    rank: int,
    alpha: float,
    path: str,
) -> Adapter:
    """Build one adapter, turning a too-large rank into an error that names the module."""
    adapter_cls.check_shape(config, in_f, out_f, rank, path)
    return adapter_cls(config, in_f, out_f, rank, alpha)


def _reference_param(module: nn.Module) -> torch.Tensor:
    for p in module.parameters():
        return p
    for b in module.buffers():
        return b
    return torch.empty(0)


def mark_trainable(model: nn.Module, names: list[str] | None = None) -> None:
    """Freeze everything, then unfreeze the parameters of the named adapters (all adapters when None)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in adapted_layers(model):
        for adapter_name, adapter in layer.adapters.items():
            if names is None or adapter_name in names:
                for pname in adapter.param_roles():
                    adapter.get_parameter(pname).requires_grad_(True)  # dotted names: nested experts
    rec = record(model)
    for adapter_name, entry in (rec.entries if rec is not None else {}).items():
        if names is None or adapter_name in names:
            for p in entry.trainable.values():
                p.requires_grad_(True)
    for _, wrapper in saved_modules(model):
        for adapter_name, twin in wrapper.copies.items():
            if names is None or adapter_name in names:
                for p in twin.parameters():
                    p.requires_grad_(True)


def named_adapter_params(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, str, Adapter]]:
    """(qualified name, parameter, role, adapter) for every adapter parameter in the model."""
    for path, layer in adapted_layers(model):
        for adapter_name, adapter in layer.adapters.items():
            for pname, role in adapter.param_roles().items():
                yield f"{path}.adapters.{adapter_name}.{pname}", adapter.get_parameter(pname), role, adapter


# ---------------------------------------------------------------------------------------------------------------
def merge(model: nn.Module, names: list[str] | None = None) -> nn.Module:
    """Fold the active adapters (or the named ones) into the base weights (idempotent).

    Raises:
        ValueError: a name that is not attached, or one that is attached but not active (merging it would
            make an inactive adapter apply); the message lists the valid names.
    """
    if names is not None:
        known = configs(model)
        active = {n for _, layer in adapted_layers(model) for n in layer.active}
        for n in names:
            if n not in known:
                raise ValueError(f"merge: no adapter named {n!r}; attached: {sorted(known)}")
            if n not in active:
                raise ValueError(
                    f"merge: adapter {n!r} is not active, so merging it would switch it on; "
                    f"activate it first (lf.set_active). Active: {sorted(active)}"
                )
    for _, layer in adapted_layers(model):
        layer.merge(names)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge` (idempotent)."""
    for _, layer in adapted_layers(model):
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module, progress: bool = False) -> nn.Module:
    """Merge every active adapter and return the plain transformers model (adapters removed).

    A quantised (NF4) base is dequantised first and the merged model stays in the compute dtype: we never
    silently re-quantise.
    """
    from lorafam.family import spec_for_config

    cfgs = configs(model)
    dequantised = False
    for path, layer in list(adapted_layers(model)):
        base = layer.base_layer
        if is_quantized(base):
            base = base.to_float_linear()
            layer.base_layer = base
            dequantised = True
        layer.unmerge()
        layer.merge()
        set_module(model, path, base)
    for path, module in list(adaptable_layers(model).items()):  # the rest of a QLoRA base (never adapted)
        if is_quantized(module) and hasattr(module, "to_float_linear"):
            set_module(model, path, module.to_float_linear())
            dequantised = True
    for path, wrapper in list(saved_modules(model)):  # the trained copy in use replaces the module (as PEFT)
        chosen = wrapper.in_use()
        for p in chosen.parameters():
            p.requires_grad_(False)
        set_module(model, path, chosen)
    rec = record(model)
    for name, cfg in cfgs.items():
        spec_for_config(cfg).adapter_cls.on_detach(model, cfg, name)
        rec.detach(name)  # type: ignore[union-attr]
    drop_if_empty(model)
    if dequantised:
        import warnings

        warnings.warn(
            "merge_and_unload: the NF4 base was dequantised; the merged model is in floating point "
            "(not re-quantised).",
            stacklevel=2,
        )
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def detach(model: nn.Module, name: str) -> nn.Module:
    """Remove adapter ``name`` from ``model`` without merging it; returns the model.

    The member's model-level state (hooks, attention switch, extra trainable tensors) goes with it, other
    adapters stay as they are (merged ones stay merged), and a layer whose last adapter this was gets its
    original base layer back in place.

    Raises:
        ValueError: no adapter of that name is attached (the message lists the attached ones).
    """
    from lorafam.family import spec_for_config

    cfgs = configs(model)
    if name not in cfgs:
        raise ValueError(f"no adapter named {name!r} on this model; attached: {sorted(cfgs)}")
    config = cfgs[name]
    spec_for_config(config).adapter_cls.on_detach(model, config, name)
    record(model).detach(name)  # type: ignore[union-attr]  # its hooks and model-level changes, newest first
    for path, layer in list(adapted_layers(model)):
        if name in layer.adapters:
            layer.remove_adapter(name)
            if not layer.adapters:
                set_module(model, path, layer.base_layer)
    detach_copies(model, name)
    drop_if_empty(model)
    return model


def unload(model: nn.Module) -> nn.Module:
    """Remove all adapters without merging; the base model comes back unchanged."""
    for name in reversed(list(configs(model))):
        detach(model, name)
    for path, layer in list(adapted_layers(model)):  # layers left without a config (a failed attach)
        layer.unmerge()
        set_module(model, path, layer.base_layer)
    return model


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
