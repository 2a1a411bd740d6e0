"""The report's words, per language: the tables themselves live in :mod:`lorafam.report.words` (one module per
language), so the tone can be edited without touching a rule. Numbers are filled in, never invented; a missing
number renders as "—" (see :func:`say`).
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any

from lorafam.report.words import en, intervals, zh

if TYPE_CHECKING:
    from lorafam.family import FamilyMember


class _Safe(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            return "—"
        try:
            return super().format_field(value, format_spec)
        except (ValueError, TypeError):
            return str(value)


def say(lang: str, table: dict[str, dict[str, str]], key: str, **args: Any) -> str:
    """``table[lang][key]`` with ``args`` filled in (``None`` → "—")."""
    return _Safe().format(table[lang][key], **args)


VERDICTS: dict[str, dict[str, str]] = {
    "en": {**en.VERDICTS, **intervals.VERDICTS_EN},
    "zh": {**zh.VERDICTS, **intervals.VERDICTS_ZH},
}
SERIES_NAMES: dict[str, dict[str, str]] = {"en": en.SERIES_NAMES, "zh": zh.SERIES_NAMES}
UI: dict[str, dict[str, str]] = {"en": {**en.UI, **intervals.UI_EN}, "zh": {**zh.UI, **intervals.UI_ZH}}
CLAIMS: dict[str, dict[str, str]] = {"en": en.CLAIMS, "zh": zh.CLAIMS}
REASONS: dict[str, dict[str, str]] = {
    "en": {**en.REASONS, **intervals.EN},  # the interval-based claim rules' sentences (arena's)
    "zh": {**zh.REASONS, **intervals.ZH},
}
# One-line ideas in Chinese, per registry member (a member added later falls back to its English idea).
ZH_IDEAS: dict[str, str] = zh.IDEAS


def series_name(lang: str, key: str) -> str:
    """A benchmark series key ("reuse") in words; unknown keys are shown as they are."""
    return SERIES_NAMES[lang].get(key, key)


def idea(lang: str, member: FamilyMember) -> str:
    """The member's one-line idea in ``lang`` (the registry's English sentence where zh has none yet)."""
    if lang == "zh":
        return ZH_IDEAS.get(member.name, member.idea)
    return member.idea
