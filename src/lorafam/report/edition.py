"""One edition of the article being assembled: its language and tone, the data and verdicts, the numbers it has
printed (``Article.num``) and its numbered figures (``Article.figure``). Shared by :mod:`lorafam.report.article`
(the chapters) and :mod:`lorafam.report.article_figures` (which figure goes where).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorafam.report import claims as C
from lorafam.report.data import ReportData
from lorafam.report.render import Block
from lorafam.report.style import figure_lang
from lorafam.report.text import _Safe
from lorafam.report.words import article_en, article_zh

WORDS = {"en": article_en, "zh": article_zh}
TONES = ("lively", "plain")

DISPLAY = {
    "lora": "LoRA",
    "rslora": "rsLoRA",
    "qlora": "QLoRA",
    "longlora": "LongLoRA",
    "adalora": "AdaLoRA",
    "loraplus": "LoRA+",
    "dora": "DoRA",
    "mopeft": "MoPEFT",
    "alora": "aLoRA",
    "quantum": "Quantum-PEFT",
}


def cite(text: str) -> str:
    """Mark ``text`` as a citation (the renderers show it small and grey; the zh language check skips it)."""
    return f"⟦{text}⟧"


@dataclass
class Article:
    """One edition being assembled: language, tone, the data and verdicts, and the numbers it has printed."""

    lang: str
    tone: str
    data: ReportData
    verdicts: dict[str, C.Verdict]
    facts: dict[str, Any] = field(default_factory=dict)
    figures: list[Block] = field(default_factory=list)

    @property
    def w(self) -> Any:
        return WORDS[self.lang]

    def t(self, key: str, **args: Any) -> str:
        """The sentence ``key`` in this language and tone ("" for a flourish in the plain tone)."""
        table = self.w.ART
        if self.tone == "plain" and key.startswith("flair_"):
            return ""
        text = table.get(f"{key}@{self.tone}", table[key])
        return _Safe().format(text, **args)

    def num(self, name: str, value: Any) -> Any:
        """Record a number the article prints (``report-data.json`` → ``article.facts``) and return it."""
        self.facts[name] = value
        return value

    def figure(self, name: str, caption_key: str, png: bytes | None, **args: Any) -> list[Block]:
        """A numbered figure (upload order = order of appearance); nothing when there is nothing to draw."""
        if not png:
            return []
        n = len(self.figures) + 1
        caption = self.t("fig", n=n) + " " + self.t(caption_key, **args)
        block = Block("figure", caption, png=png, name=f"{n:02d}-{name}")
        self.figures.append(block)
        return [block]

    @property
    def sp(self) -> str:
        """The space between two sentences: none in Chinese, one in English."""
        return "" if self.lang == "zh" else " "

    @property
    def fw(self) -> dict[str, str]:
        """Figure labels in the language the figures can be drawn in here."""
        return WORDS[figure_lang(self.lang)].FIG


def _p(*parts: str) -> list[Block]:
    text = "".join(p for p in parts if p)
    return [Block("p", text)] if text else []
