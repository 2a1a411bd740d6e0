"""Leaf helpers shared by every layer: "did you mean" errors, a deep dict merge, reading a YAML mapping. Imports
nothing of lorafam."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def closest(name: str, choices: Iterable[str], cutoff: float = 0.5) -> str:
    """A " Did you mean 'x'?" suffix for error messages ('' when nothing is close: difflib's ratio under
    ``cutoff``; the trainer's config asks for a near miss, 0.8, so an unrelated key gets no suggestion)."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return f" Did you mean {match[0]!r}?" if match else ""


def unknown(kind: str, name: str, valid: Iterable[str], where: str = "") -> ValueError:
    """``ValueError("<where>: unknown <kind> 'name'. Did you mean …? Valid: a, b, c")`` for the caller to raise."""
    choices = list(valid)
    prefix = f"{where}: " if where else ""
    return ValueError(f"{prefix}unknown {kind} {name!r}.{closest(name, choices)} Valid: {', '.join(choices)}")


def check_keys(given: Iterable[str], valid: Iterable[str], where: str, kind: str = "key") -> None:
    """Raise :func:`unknown` for the first key of ``given`` that is not in ``valid``."""
    choices = list(valid)
    for key in given:
        if key not in choices:
            raise unknown(kind, key, choices, where)


def merge_dicts(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; nested mappings are merged key by key, everything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_mapping(
    path: str | Path, where: str, error: type[ValueError] = ValueError, missing: str = "no such file"
) -> dict[str, Any]:
    """The mapping at the top of a YAML file (an empty file is ``{}``).

    Raises:
        ``error`` (a ValueError): the file is missing (``"<where>: <missing>"``), is not YAML, or holds something
        other than a mapping at the top level (named, with the type found).
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise error(f"{where}: {missing}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    return data
