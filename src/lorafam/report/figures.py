"""The article's figures, drawn for a phone: one idea each, portrait-friendly, labels readable at 375 px.

Every figure is 4.2 in wide at 200 dpi (840 px): shown 343 px wide on a 375 px screen, an 11 pt label is about
12 px tall. Each member has one colour *and* one marker (:mod:`lorafam.report.style`). Intervals are drawn as
bars or bands. Words come in as a dict (the language's figure labels), numbers from the result data only.
PNGs carry no timestamp, so the same data gives the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from lorafam.report.style import cjk_font, member_style

WIDTH_IN, DPI = 4.2, 200


def _fig(height: float, lang: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fonts = [cjk_font()] if lang == "zh" and cjk_font() else []
    plt.rcParams.update(
        {
            "font.size": 11,
            "font.family": "sans-serif",
            "font.sans-serif": [*fonts, "DejaVu Sans"],
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 12,
            "axes.titleweight": "bold",
            "axes.titlelocation": "left",
            "legend.fontsize": 10,
            "xtick.labelsize": 10,
            "ytick.labelsize": 10,
        }
    )
    return plt.subplots(figsize=(WIDTH_IN, height), dpi=DPI)


def _plain_log(axis: Any, suffix: str = "", subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """Log-axis ticks written as plain numbers (1, 10, 100) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=8))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{suffix}"))
    axis.set_minor_formatter(NullFormatter())


def _integer_steps(ax: Any) -> None:
    """Training steps are whole numbers: no 2.5 on the step axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
def family_tree(members: Sequence[Any], changes: dict[str, str], w: dict[str, str], lang: str) -> bytes:
    """One row per member, oldest first: year, lineage line from its parent, name, and what it changed."""
    fig, ax = _fig(0.52 * len(members) + 0.9, lang)
    row = {m.name: i for i, m in enumerate(members)}
    depth: dict[str, int] = {}
    for m in members:
        depth[m.name] = depth.get(m.parent, -1) + 1 if m.parent in row else 0
    x_of = {n: 0.35 + 0.35 * d for n, d in depth.items()}
    last_year = None
    for m in members:
        y = -row[m.name]
        if m.year != last_year:
            ax.text(0, y, str(m.year), ha="right", va="center", fontsize=10, color="#555555")
            last_year = m.year
        if m.parent in row:  # an elbow in the parent's colour; below the root it runs between the columns
            px, py = x_of[m.parent], -row[m.parent]
            vx = px if depth[m.parent] == 0 else px + 0.175
            xs, ys = ([px, vx, vx, x_of[m.name]], [py, py, y, y])
            ax.plot(xs, ys, color=member_style(m.parent)[0], lw=1.3, alpha=0.7, zorder=1)
        colour, marker = member_style(m.name)
        ax.scatter([x_of[m.name]], [y], s=70, color=colour, marker=marker, zorder=3)
        tx = max(x_of.values()) + 0.25
        ax.text(tx, y + 0.13, m.name, fontsize=11, fontweight="bold", va="center", color=colour)
        ax.text(tx, y - 0.22, changes.get(m.name, ""), fontsize=9.5, va="center", color="#333333")
    ax.set_xlim(-0.45, 4.2)
    ax.set_ylim(-len(members) + 0.4, 0.8)
    ax.axis("off")
    ax.set_title(w["tree_title"])
    return _png(fig)


def lora_picture(w: dict[str, str], lang: str) -> bytes:
    """W0 (big, frozen) plus B·A (thin, trained): the LoRA idea as shapes."""
    from matplotlib.patches import Rectangle

    fig, ax = _fig(2.6, lang)
    ax.add_patch(Rectangle((0, 0), 3, 3, facecolor="#dfe6ee", edgecolor="#5a6b7d"))
    ax.text(1.5, 1.5, w["pic_w0"], ha="center", va="center", fontsize=11)
    ax.text(3.45, 1.5, "+", ha="center", va="center", fontsize=18)
    ax.add_patch(Rectangle((3.9, 0), 0.45, 3, facecolor="#0072B2", edgecolor="#004c78"))
    ax.text(4.12, -0.35, "B", ha="center", va="center", fontsize=12, fontweight="bold")
    ax.text(4.65, 1.5, "×", ha="center", va="center", fontsize=14)
    ax.add_patch(Rectangle((5.0, 1.27), 3, 0.45, facecolor="#D55E00", edgecolor="#8a3d00"))
    ax.text(6.5, 0.95, "A", ha="center", va="center", fontsize=12, fontweight="bold")
    ax.text(6.5, 2.4, w["pic_ba"], ha="center", va="center", fontsize=10)
    ax.text(1.5, -0.35, w["pic_frozen"], ha="center", va="center", fontsize=10, color="#5a6b7d")
    ax.set_xlim(-0.2, 8.2)
    ax.set_ylim(-0.7, 3.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(w["pic_title"])
    return _png(fig)


def ratio_bars(items: list[tuple[str, float]], w: dict[str, str], lang: str, title: str) -> bytes | None:
    """Horizontal bars of "× LoRA" ratios on a log axis (1× marked), each labelled with its value."""
    items = [(k, v) for k, v in items if v and v > 0]
    if not items:
        return None
    fig, ax = _fig(0.55 * len(items) + 1.2, lang)
    names = [k for k, _ in items][::-1]
    vals = [v for _, v in items][::-1]
    ax.barh(names, vals, color="#7F7F7F", height=0.55)
    ax.set_xscale("log")
    _plain_log(ax.xaxis, "×", subs=(1.0,))
    ax.axvline(1, color="#0072B2", lw=1.5)
    for i, v in enumerate(vals):
        ax.text(v * 1.08, i, f"{v:.3g}×", va="center", fontsize=10)
    ax.set_xlim(min(0.5, min(vals) / 2), max(vals) * 6)
    ax.set_xlabel(w["times_lora"])
    ax.set_title(title)
    return _png(fig)


def loss_curves(runs: dict[str, list[list[list[float]]]], w: dict[str, str], lang: str) -> bytes | None:
    """Training loss at every logged step (real points), mean over seeds with a min–max band, per member."""
    runs = {k: v for k, v in runs.items() if v and any(len(c) >= 2 for c in v)}
    if not runs:
        return None
    fig, ax = _fig(3.2, lang)
    for member, curves in runs.items():
        colour, marker = member_style(member)
        steps = sorted({s for c in curves for s, _ in c if all(any(t == s for t, _ in d) for d in curves)})
        per = [[dict((s, v) for s, v in c)[s] for c in curves] for s in steps]
        mean = [sum(p) / len(p) for p in per]
        every = max(1, len(steps) // 12)
        ax.plot(steps, mean, color=colour, marker=marker, ms=5, markevery=every, lw=1.6, label=member)
        if len(curves) > 1:
            ax.fill_between(steps, [min(p) for p in per], [max(p) for p in per], color=colour, alpha=0.18, lw=0)
    ax.set_yscale("log")
    _plain_log(ax.yaxis)
    _integer_steps(ax)
    ax.set_xlabel(w["steps"])
    ax.set_ylabel(w["loss"])
    ax.legend(frameon=False)
    ax.set_title(w["curve_title"])
    return _png(fig)


def eval_curves(points: dict[str, list[tuple[float, float, float, float]]], w: dict[str, str], lang: str) -> Any:
    """Exact match (%) at each evaluation point of the run, with its interval as a band; None if < 2 points."""
    points = {k: v for k, v in points.items() if len(v) >= 2}
    if not points:
        return None
    fig, ax = _fig(3.2, lang)
    for member, pts in points.items():
        colour, marker = member_style(member)
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], color=colour, marker=marker, ms=5, lw=1.6, label=member)
        ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=colour, alpha=0.15, lw=0)
    _integer_steps(ax)
    ax.set_xlabel(w["steps"])
    ax.set_ylabel(w["acc"])
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False)
    ax.set_title(w["eval_title"])
    return _png(fig)


def intervals(items: list[tuple[str, float, float, float]], w: dict[str, str], lang: str, title: str) -> Any:
    """Member − LoRA differences (points) with their intervals as bars; 0 marked. Items: (member, d, lo, hi)."""
    items = [i for i in items if all(math.isfinite(v) for v in i[1:])]
    if not items:
        return None
    fig, ax = _fig(0.5 * len(items) + 1.3, lang)
    for y, (member, d, lo, hi) in enumerate(reversed(items)):
        colour, marker = member_style(member)
        ax.plot([lo, hi], [y, y], color=colour, lw=3, solid_capstyle="butt", alpha=0.55)
        ax.scatter([d], [y], color=colour, marker=marker, s=60, zorder=3)
    ax.set_yticks(range(len(items)), [i[0] for i in reversed(items)])
    ax.axvline(0, color="#333333", lw=1)
    ax.set_xlabel(w["diff_points"])
    ax.set_title(title)
    return _png(fig)


def param_bars(items: list[tuple[str, float]], w: dict[str, str], lang: str) -> bytes | None:
    """Trainable parameters per member (log axis), each bar in the member's colour, value printed."""
    items = [(k, v) for k, v in items if v and v > 0]
    if not items:
        return None
    fig, ax = _fig(0.42 * len(items) + 1.2, lang)
    for y, (member, v) in enumerate(reversed(items)):
        ax.barh([y], [v], color=member_style(member)[0], height=0.6)
        ax.text(v * 1.15, y, _short(v), va="center", fontsize=9.5)
    ax.set_yticks(range(len(items)), [k for k, _ in reversed(items)])
    ax.set_xscale("log")
    ax.set_xlim(min(v for _, v in items) / 3, max(v for _, v in items) * 30)
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
    ax.set_xlabel(w["params"])
    ax.set_title(w["params_title"])
    return _png(fig)


def _short(v: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}"


def memory_bars(items: list[tuple[str, float]], limit: float, w: dict[str, str], lang: str) -> bytes | None:
    """GiB bars against one card's memory (a dashed line): the 70B arithmetic at a glance."""
    if not items:
        return None
    fig, ax = _fig(0.6 * len(items) + 1.3, lang)
    names = [k for k, _ in items][::-1]
    vals = [v for _, v in items][::-1]
    ax.barh(names, vals, color=["#009E73" if v <= limit else "#D55E00" for v in vals], height=0.55)
    ax.axvline(limit, color="#333333", ls="--", lw=1.3, label=w["card"])
    ax.legend(frameon=False, loc="lower right")
    for i, v in enumerate(vals):
        ax.text(v + max(vals) * 0.02, i, f"{v:.0f}", va="center", fontsize=10)
    ax.set_xlim(0, max(vals) * 1.2)
    ax.set_xlabel(w["gib"])
    ax.set_title(w["mem_title"])
    return _png(fig)


def series_lines(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str, lang: str):
    """A few named series (benchmark files): distinct colour and marker each."""
    if not series:
        return None
    colours = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#111111"]
    fig, ax = _fig(3.2, lang)
    for i, (name, pts) in enumerate(sorted(series.items())):
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, color=colours[i % 6], marker="osD^vP"[i % 6], ms=5, lw=1.6, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize=9)
    ax.set_title(title)
    return _png(fig)
