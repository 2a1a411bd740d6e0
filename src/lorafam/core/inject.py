"""Injection: wrap the target layers, freeze the rest; merge, unmerge, detach, unload (lookups in ``core.lookup``,
on/off switches in ``core.switches``)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from lorafam.core.adapter import AdaptedLayer, Adapter
from lorafam.core.base_layer import base_shape, is_quantized, set_module
from lorafam.core.config import AdapterConfig
from lorafam.core.lookup import adaptable_layers, adapted_layers, configs, match_targets
from lorafam.core.record import Entry, drop_if_empty, ensure_record, record
from lorafam.core.saved_modules import attach_copies, detach_copies, saved_modules


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
    if name in configs(model):
        raise ValueError(f"an adapter named {name!r} is already attached; pick another name")
    layers = adaptable_layers(model)
    picked = match_targets(list(layers), config.targets, config.exclude)
    if not picked:
        suffixes = sorted({n.split(".")[-1] for n in layers})
        raise ValueError(
            f"targets={config.targets!r} matched no module of {type(model).__name__}. "
            f"Adaptable module names (suffixes): {', '.join(suffixes)}"
        )
    quantized_now = _wrap_and_add(model, {p: layers[p] for p in picked}, spec.adapter_cls, config, name)
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
        spec.adapter_cls.on_attach(model, config, name)
    except Exception:
        detach(model, name)
        raise
    if trainable:
        mark_trainable(model, [name])
    else:
        _freeze_for_inference(model, name)
    return model


def _wrap_and_add(
    model: nn.Module, picked: dict[str, nn.Module], adapter_cls: type[Adapter], config: AdapterConfig, name: str
) -> bool:
    """Wrap each picked layer (quantising its base first for QLoRA) and add adapter ``name`` to it; all or
    nothing: on any error the model is put back as it was. Returns whether a base was quantised."""
    quantized_now = False
    done: list[tuple[str, nn.Module, AdaptedLayer]] = []  # (path, module found there, adapted layer)
    try:
        for path, found in picked.items():
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
    return quantized_now


def _freeze_for_inference(model: nn.Module, name: str) -> None:
    """PEFT's ``is_trainable=False``: the base and adapter ``name`` frozen, other adapters keep their flags."""
    keep = [p for n, p, _, _ in named_adapter_params(model) if p.requires_grad and f".adapters.{name}." not in n]
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


def drop_caches(model: nn.Module) -> nn.Module:
    """Forget every value the adapters derived from their parameters, so the next forward recomputes them.

    Forwards without autograd (evaluation, decoding) reuse such values (LoRA's and DoRA's decode copies, DoRA's
    weight norm, Quantum-PEFT's circuits) until a parameter's version counter or storage changes, which every
    ``torch.no_grad()`` in-place update, ``torch.optim`` step and ``load_state_dict`` does. An edit through
    ``.data`` (``p.data.mul_(0)``, an optimizer that writes that way) moves neither: call this after one."""
    for module in model.modules():
        if isinstance(module, (AdaptedLayer, Adapter)):
            module.clear_caches()
    return model


def unload(model: nn.Module) -> nn.Module:
    """Remove all adapters without merging; the base model comes back unchanged."""
    for name in reversed(list(configs(model))):
        detach(model, name)
    for path, layer in list(adapted_layers(model)):  # layers left without a config (a failed attach)
        layer.unmerge()
        set_module(model, path, layer.base_layer)
    return model


# Re-exported: the public API (lorafam/__init__.py) and callers import these from here.
from lorafam.core.switches import (  # noqa: E402
    active_adapters,
    count_params,
    disabled,
    set_active,
    trainable_summary,
)

__all__ = [
    "active_adapters",
    "adaptable_layers",
    "adapted_layers",
    "attach",
    "configs",
    "count_params",
    "detach",
    "disabled",
    "make_adapter",
    "mark_trainable",
    "match_targets",
    "merge",
    "merge_and_unload",
    "named_adapter_params",
    "set_active",
    "trainable_summary",
    "unload",
    "unmerge",
]
