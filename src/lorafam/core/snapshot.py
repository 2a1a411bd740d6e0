"""What ``attach`` + loading may change on a model, kept so that a failed ``load_adapter`` can put it all back."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from lorafam.core.adapter import AdaptedLayer
from lorafam.core.base_layer import Conv1D, set_module
from lorafam.core.config import AdapterConfig
from lorafam.core.record import RECORD_ATTR, ensure_record, record
from lorafam.core.saved_modules import SavedModule, embedding_and_norm_params, saved_modules


class ModelSnapshot:
    """What ``attach`` + loading may change on a model, kept so that a failed load can put it all back.

    Held references, not copies: the modules at every adaptable path (a quantised load replaces them, the
    float originals stay alive here until the load succeeds), the adapter lists of layers already adapted,
    the model record's entries, every parameter's ``requires_grad`` and every module's training flag,
    and the rotary-embedding state that LongLoRA's position interpolation rewrites. Tensors that a load writes
    into in place (LongLoRA's embeddings and norms) are copied, only when the file's member does that.
    """

    def __init__(self, model: nn.Module, in_place: bool = False, base_weights: bool = False) -> None:
        from lorafam.core.lookup import adaptable_layers

        self.modules: dict[str, nn.Module]
        self.modules = dict(adaptable_layers(model))
        self.modules.update(saved_modules(model))
        self.modules.update((p, m) for p, m in model.named_modules() if p)  # modules_to_save may wrap any
        self.layer_lists = {
            id(layer): (list(layer.active), list(layer.merged), list(layer.adapters))
            for layer in self.modules.values()
            if isinstance(layer, AdaptedLayer)
        }
        self.copy_lists = {
            id(w): (list(w.active), list(w.copies)) for w in self.modules.values() if isinstance(w, SavedModule)
        }
        rec = record(model)
        self.entries = dict(rec.entries) if rec is not None else None  # the model record's entries
        self.grad = [(p, p.requires_grad) for p in model.parameters()]
        self.training = [(m, m.training) for m in model.modules()]
        self.rope = copy.deepcopy(getattr(getattr(model, "config", None), "rope_parameters", None))
        self.rotary = [
            (m, {k: getattr(m, k) for k in _ROTARY_ATTRS if hasattr(m, k)})
            for m in model.modules()
            if hasattr(m, "inv_freq") and hasattr(m, "rope_type")
        ]
        self.extra_params = _in_place_loaded_params(model) if in_place else []
        if base_weights:  # PiSSA/OLoRA rewrite the base weights of the layers they adapt
            self.extra_params += [
                p for m in self.modules.values() if isinstance(m, (nn.Linear, Conv1D)) for p in m.parameters()
            ]
        self.extra = {id(p): p.detach().clone() for p in self.extra_params}

    def restore(self, model: nn.Module, config: AdapterConfig, name: str) -> None:
        from lorafam.core.lookup import configs
        from lorafam.family import spec_for_config

        if name in configs(model) and configs(model)[name] is config:
            with contextlib.suppress(Exception):  # a half-attached adapter; the restore below still runs
                spec_for_config(config).adapter_cls.on_detach(model, config, name)
            with contextlib.suppress(Exception):
                record(model).detach(name)  # type: ignore[union-attr]  # its hooks
        for path, module in self.modules.items():
            try:
                current = model.get_submodule(path)
            except AttributeError:  # inside a module that the restore already put back
                continue
            if current is not module:
                set_module(model, path, module)
            if id(module) in self.copy_lists:
                active, names = self.copy_lists[id(module)]
                for extra in [n for n in module.copies if n not in names]:
                    del module.copies[extra]
                module.active = active
            if id(module) in self.layer_lists:
                active, merged, names = self.layer_lists[id(module)]
                for extra in [n for n in module.adapters if n not in names]:
                    del module.adapters[extra]
                module.active, module.merged = active, merged
        if self.entries is None:
            if record(model) is not None:
                object.__delattr__(model, RECORD_ATTR)
        else:
            ensure_record(model).entries = dict(self.entries)
        for p, flag in self.grad:
            p.requires_grad_(flag)
        for m, flag in self.training:
            m.training = flag
        if self.rope is not None:
            model.config.rope_parameters = self.rope
        for m, attrs in self.rotary:
            for k, v in attrs.items():
                setattr(m, k, v)
        with torch.no_grad():
            for p in self.extra_params:
                if p.shape == self.extra[id(p)].shape:
                    p.copy_(self.extra[id(p)])


_ROTARY_ATTRS = ("inv_freq", "original_inv_freq", "rope_type", "attention_scaling")


def _in_place_loaded_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters outside adapters that a load may overwrite in place (embeddings and norms; small)."""
    try:
        return list(embedding_and_norm_params(model).values())
    except ValueError:
        return []
