"""One look per member for every figure: a distinct colour *and* marker (colour-blind readers and grey prints
still tell them apart), and the fonts that can draw each language's labels."""

from __future__ import annotations

from functools import cache

# Okabe-Ito colours first (colour-blind safe), then darker extras; no two members share a hue family.
MEMBER_STYLE: dict[str, tuple[str, str]] = {
    "lora": ("#0072B2", "o"),  # blue, circle
    "rslora": ("#56B4E9", "s"),  # sky, square
    "qlora": ("#009E73", "^"),  # green, triangle up
    "longlora": ("#E69F00", "v"),  # orange, triangle down
    "adalora": ("#CC79A7", "D"),  # pink, diamond
    "loraplus": ("#D55E00", "P"),  # vermillion, plus
    "dora": ("#6A3D9A", "X"),  # purple, x
    "mopeft": ("#8C564B", "h"),  # brown, hexagon
    "alora": ("#B8860B", "<"),  # dark gold, triangle left
    "quantum": ("#111111", "*"),  # black, star
    "full-ft": ("#7F7F7F", "p"),  # grey, pentagon
    "base": ("#B0B0B0", "."),  # light grey, dot
}
_SPARE = [("#1B9E77", ">"), ("#E7298A", "d"), ("#66A61E", "8"), ("#A6761D", "H")]


def member_style(member: str) -> tuple[str, str]:
    """(colour, matplotlib marker) of ``member``; members added later get a spare pair, stable by name."""
    if member in MEMBER_STYLE:
        return MEMBER_STYLE[member]
    return _SPARE[sum(map(ord, member)) % len(_SPARE)]


CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "SimHei")


@cache
def cjk_font() -> str | None:
    """The first installed font that draws Chinese labels, or None (zh figures then fall back to English)."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return next((n for n in CJK_FONTS if n in names), None)


def figure_lang(lang: str) -> str:
    """The language a figure's labels can be drawn in on this machine."""
    return "zh" if lang == "zh" and cjk_font() else "en"
