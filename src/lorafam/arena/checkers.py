"""The arena's items and checkers: one question with its gold answer, and the functions that decide whether a
prediction is right (``(prediction, gold) -> bool``)."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from lorafam.helpers import closest


@dataclass(frozen=True)
class Example:
    """One question and its gold answer (the answer is what the assistant should reply, verbatim)."""

    prompt: str
    answer: str
    key: str  # identity used to keep train and test apart


# ---------------------------------------------------------------------------------------------------------------
# checkers: (prediction, gold) -> correct?
def check_exact(pred: str, gold: str) -> bool:
    """Exact match after trimming surrounding whitespace."""
    return pred.strip() == gold.strip()


def check_json(pred: str, gold: str) -> bool:
    """The first JSON object in the prediction equals the gold object (field order and spacing ignored)."""
    match = re.search(r"\{.*\}", pred, flags=re.DOTALL)
    if match is None:
        return False
    try:
        return json.loads(match.group(0)) == json.loads(gold)
    except json.JSONDecodeError:
        return False


def check_number(pred: str, gold: str) -> bool:
    """The prediction is exactly one number (commas allowed) equal to the gold number."""
    text = pred.strip().replace(",", "")
    return re.fullmatch(r"-?\d+(\.\d+)?", text) is not None and float(text) == float(gold)


CHECKERS: dict[str, Callable[[str, str], bool]] = {
    "exact": check_exact,
    "json": check_json,
    "number": check_number,
}


def resolve_checker(name: str) -> Callable[[str, str], bool]:
    """A built-in checker name, or ``"module:function"`` taking (prediction, gold) and returning a bool."""
    if name in CHECKERS:
        return CHECKERS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"checker {name!r}: cannot import it ({exc})") from exc
    raise ValueError(f"unknown checker {name!r}.{closest(name, list(CHECKERS))} Valid: {', '.join(CHECKERS)}")
