"""Checks on an adapter folder before it is loaded next to a base model (``serve``, ``chat``, ``generate``, ``merge``)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn


class AdapterMismatchError(ValueError):
    """The adapter folder was trained on a different base model."""


def check_adapter_base(adapter_dir: str | Path, model: nn.Module, base_name: str | None) -> None:
    """Refuse an adapter whose ``base_model_name_or_path`` names another base than the one loaded."""
    cfg_file = Path(adapter_dir) / "adapter_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: not an adapter folder (adapter_config.json missing)")
    recorded = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    loaded = getattr(getattr(model, "config", None), "_name_or_path", None)
    if recorded and loaded and _norm(recorded) != _norm(loaded):
        given = base_name or "the embedded default"
        raise AdapterMismatchError(
            f"{adapter_dir}: this adapter was trained on base {recorded!r}, but the model loaded is {loaded!r} "
            f"(--model {given}). Pass the matching --model, or --ignore-base-mismatch if you know they are the same"
        )


def _norm(name: str) -> str:
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name
