"""Finding things on a model: the layers an adapter can sit on, target matching, the attached adapters."""

from __future__ import annotations

import re
from collections.abc import Iterator

from torch import nn

from lorafam.core.adapter import AdaptedLayer
from lorafam.core.base_layer import Conv1D, is_quantized
from lorafam.core.config import AdapterConfig
from lorafam.core.record import record
from lorafam.core.saved_modules import SavedModule


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
