"""PEFT's ``modules_to_save``: whole modules (the output head, the embeddings) trained as per-adapter copies.

PEFT's rule, which we keep so that files load the same both ways (checked in tests/unit/test_modules_to_save.py):

- a name in ``modules_to_save`` selects every module whose path equals it or ends with ``.name``;
- each selected module is wrapped; every adapter that lists it gets its own *copy*, trainable, and the original
  stays frozen. With tied input/output embeddings the copy is untied from its twin: saving ``lm_head`` of a
  tied model trains a separate head while the embeddings keep the original weight (PEFT's default,
  ``ensure_weight_tying=False``);
- the copy of the active adapter runs; with adapters disabled the original runs;
- the file stores the copy under the module's own key (``base_model.model.lm_head.weight``).

:class:`SavedModule` is the wrapper. It forwards attribute reads it does not have (``weight``,
``num_embeddings``...) to the module in use, so model code that inspects its head or embeddings keeps working.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lorafam.core.base_layer import set_module


class SavedModule(nn.Module):
    """A module plus per-adapter trainable copies of it (PEFT's ``ModulesToSaveWrapper``)."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original_module = original
        self.copies = nn.ModuleDict()
        self.active: list[str] = []
        self.disabled = False
        self.train(original.training)

    def add_copy(self, name: str) -> None:
        if name in self.copies:
            raise ValueError(f"adapter {name!r} already has a copy of this module")
        twin = copy.deepcopy(self.original_module)  # its own tensors: tied twins are not tied to the copy
        for p in twin.parameters():
            p.requires_grad_(True)
        self.copies[name] = twin
        self.active.append(name)

    def remove_copy(self, name: str) -> None:
        if name in self.copies:
            del self.copies[name]
        self.active = [n for n in self.active if n != name]

    def in_use(self) -> nn.Module:
        """The copy of the last active adapter that has one; the original when disabled or none has."""
        if not self.disabled:
            for name in reversed(self.active):
                if name in self.copies:
                    return self.copies[name]
        return self.original_module

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.in_use()(*args, **kwargs)

    def __getattr__(self, key: str) -> Any:
        try:
            return super().__getattr__(key)
        except AttributeError:
            if key.startswith("_") or key in ("original_module", "copies") or "active" not in self.__dict__:
                raise  # not built yet (deepcopy, unpickling): no forwarding, no recursion
            return getattr(self.in_use(), key)

    def extra_repr(self) -> str:
        return f"active={self.active}, disabled={self.disabled}"


def saved_modules(model: nn.Module) -> Iterator[tuple[str, SavedModule]]:
    for path, module in model.named_modules():
        if isinstance(module, SavedModule):
            yield path, module


def match_modules(model: nn.Module, names: list[str]) -> list[str]:
    """Paths of the modules ``modules_to_save`` selects (PEFT's rule), outermost first; a wrapper counts as the
    module it wraps and its insides are never matched."""
    picked: list[str] = []
    inside: list[str] = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(p + ".") for p in picked + inside):
            continue
        if isinstance(module, SavedModule):
            inside.append(path)
        if any(path == n or path.endswith("." + n) for n in names):
            picked.append(path)
    return picked


def attach_copies(model: nn.Module, names: list[str], adapter: str) -> list[str]:
    """Wrap (or reuse the wrapper of) every module ``names`` selects and give ``adapter`` a copy of each.

    Raises:
        ValueError: a name selects no module (the message lists the model's module names that end alike).
    """
    paths = match_modules(model, names)
    for n in names:
        if not any(p == n or p.endswith("." + n) for p in paths):
            leaves = sorted({p.split(".")[-1] for p, _ in model.named_modules() if p})
            raise ValueError(
                f"modules_to_save: {n!r} matches no module of {type(model).__name__}. Module names: "
                f"{', '.join(leaves[:40])}"
            )
    for path in paths:
        module = model.get_submodule(path)
        if not isinstance(module, SavedModule):
            module = SavedModule(module)
            set_module(model, path, module)
        module.add_copy(adapter)
    return paths


def detach_copies(model: nn.Module, adapter: str) -> None:
    """Remove ``adapter``'s copies; a wrapper left with none gives its place back to the original module."""
    for path, module in list(saved_modules(model)):
        module.remove_copy(adapter)
        if not module.copies:
            set_module(model, path, module.original_module)


def copies_state(model: nn.Module, adapter: str) -> dict[str, Tensor]:
    """``{module path}.{parameter}`` → tensor of ``adapter``'s copies (PEFT's file keys, without the prefix)."""
    out: dict[str, Tensor] = {}
    for path, module in saved_modules(model):
        if adapter in module.copies:
            for pname, p in module.copies[adapter].named_parameters():
                out[f"{path}.{pname}"] = p
    return out


def load_copies(model: nn.Module, adapter: str, state: dict[str, Tensor], prefix: str, source: str) -> dict:
    """Fill ``adapter``'s copies from PEFT-keyed ``state``; returns the tensors not used. Every copy tensor must
    be in the file, with the model's shape."""
    rest = dict(state)
    for key, p in copies_state(model, adapter).items():
        path, _, pname = key.rpartition(".")
        candidates = [f"{prefix}{key}", f"{prefix}{path}.modules_to_save.{adapter}.{pname}"]
        candidates.append(f"{prefix}{path}.modules_to_save.default.{pname}")
        found = next((c for c in candidates if c in rest), None)
        if found is None:
            raise KeyError(f"{source}: modules_to_save tensor {candidates[0]!r} is missing from the file")
        src = rest.pop(found)
        if tuple(src.shape) != tuple(p.shape):
            raise ValueError(
                f"{source}: {found}: shape {tuple(src.shape)} in the file but {tuple(p.shape)} in the model — "
                "was this adapter trained on a different base model?"
            )
        with torch.no_grad():
            p.copy_(src.to(dtype=p.dtype, device=p.device))
    return rest


# ---------------------------------------------------------------------------------------------------------------
def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)) or type(module).__name__.endswith(
        ("RMSNorm", "LayerNorm")
    )


def embedding_and_norm_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameter key → parameter for every embedding and normalisation layer (tied weights listed once).

    Selected by module type (``nn.Embedding``, ``nn.LayerNorm``, ``*RMSNorm``…), never by parameter name.
    """
    found: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    copied = [p for p, m in model.named_modules() if isinstance(m, SavedModule)]
    for path, module in model.named_modules():
        if any(path.startswith(c + ".") for c in copied):
            continue  # listed in modules_to_save: it trains as the adapter's copy, not in place
        if isinstance(module, nn.Embedding) or _is_norm(module):
            for pname, p in module.named_parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    found[f"{path}.{pname}" if path else pname] = p
    if not found:
        raise ValueError(f"{type(model).__name__}: no embedding or normalisation layers found to train")
    return found
