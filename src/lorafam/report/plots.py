"""The report's figures (matplotlib, Agg backend), returned as PNG bytes with no timestamps (deterministic)."""

from __future__ import annotations

import io
from typing import Any

from lorafam.report.data import ReportData, Row
from lorafam.report.style import member_style

_PALETTE = [
    "#1f6feb",
    "#d1242f",
    "#1a7f37",
    "#8250df",
    "#bf8700",
    "#0a7ea4",
    "#cf222e",
    "#57606a",
    "#e16f24",
    "#6639ba",
    "#116329",
    "#953800",
]


def _fig(width: float = 7.5, height: float = 3.6) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "lorafam"}
    )
    return plt.subplots(figsize=(width, height), dpi=110)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def family_tree() -> bytes:
    """Members on a year axis, one lane each, arrows from parent to child."""
    from lorafam.family import family

    members = family()
    fig, ax = _fig(8.5, 0.42 * len(members) + 1.0)
    lane = {m.name: i for i, m in enumerate(members)}
    for m in members:
        y = -lane[m.name]
        colour, marker = member_style(m.name)
        ax.scatter([m.year], [y], s=60, color=colour, marker=marker, zorder=3)
        venue = m.venue.split(" (")[0].split(";")[0]  # the full venue is in the table below the figure
        ax.annotate(f"{m.name}  ({m.origin}, {venue})", (m.year, y), xytext=(8, -3), textcoords="offset points")
        if m.parent in lane:
            p = next(x for x in members if x.name == m.parent)
            ax.annotate(
                "",
                xy=(m.year, y),
                xytext=(p.year, -lane[p.name]),
                arrowprops={"arrowstyle": "->", "color": "#8c959f", "lw": 0.8},
            )
    years = [m.year for m in members]
    # room on the right for the labels (tight_layout would otherwise squeeze the year axis to nothing)
    ax.set_xlim(min(years) - 0.5, max(years) + 7.5)
    ax.set_xticks(range(min(years), max(years) + 1))
    ax.spines["bottom"].set_bounds(min(years), max(years))
    ax.set_yticks([])
    ax.spines["left"].set_visible(False)
    return _png(fig)


def accuracy_curves(data: ReportData, task: str) -> bytes | None:
    """Exact match at each evaluation point, from the untrained base at step 0, one line per member (the same
    items at every point; bands: the 95 % interval when the runs carry per-item records)."""
    from lorafam.report.article_figures import eval_points

    fig, ax = _fig()
    drawn = 0
    for row in (r for r in data.rows if r.impl in ("lorafam", "full")):
        runs = row.ok_runs(task)
        if not runs or not runs[0].train_info.eval_curve:
            continue
        pts, n, kind = eval_points(runs)
        if not pts:  # a single evaluation: the final score
            acc = row.accuracies(task)
            pts, n, kind = [(runs[0].train_info.steps, 100 * sum(acc) / len(acc), None, None)], 0, ""
        xs, ys = [0] + [p[0] for p in pts], [_base_acc(data, task, n)] + [p[1] for p in pts]
        colour, marker = member_style(row.member)
        ax.plot(xs, ys, marker=marker, ms=5, label=row.label, color=colour)
        if kind == "ci":
            ax.fill_between(
                [p[0] for p in pts], [p[2] for p in pts], [p[3] for p in pts], color=colour, alpha=0.08
            )
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"exact match on {task} (%)")
    ax.legend(fontsize=7, ncol=2, frameon=False)
    return _png(fig)


def _base_acc(data: ReportData, task: str, n: int = 0) -> float:
    """The untrained base's exact match (on the first ``n`` items when its run has per-item records)."""
    base = data.row("base", "base")
    runs = base.ok_runs(task) if base else []
    if n and runs and runs[0].train_info.evals:
        em = runs[0].train_info.evals[-1]["em"][:n]
        return 100 * sum(em) / len(em) if em else 0.0
    acc = base.accuracies(task) if base else []
    return 100 * sum(acc) / len(acc) if acc else 0.0


def pareto(data: ReportData, task: str) -> bytes | None:
    """Trainable parameters (log) vs accuracy; the Pareto front = no other point has fewer params and more acc."""
    pts = []
    for row in data.rows:
        acc = row.accuracies(task)
        params = row.mean("trainable_params", task)
        if acc and params:
            pts.append((params, 100 * sum(acc) / len(acc), row))
    if not pts:
        return None
    fig, ax = _fig()
    for x, y, row in pts:
        _point(ax, x, y, row)
        ax.annotate(row.label, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
    front = pareto_front([(x, y) for x, y, _ in pts])
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="#57606a", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel(f"exact match on {task} (%)")
    return _png(fig)


def _point(ax: Any, x: float, y: float, row: Row) -> None:
    """One member's point in its colour and marker; a PEFT peer is the same marker, hollow."""
    colour, marker = member_style(row.member)
    face = "white" if row.impl == "peft" else colour
    ax.scatter([x], [y], s=36, marker=marker, facecolors=face, edgecolors=colour, zorder=3)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another (fewer or equal params and strictly higher accuracy), sorted by params."""
    front = []
    for p in sorted(points):
        if not front or p[1] > front[-1][1]:
            front.append(p)
    return front


def memory(data: ReportData) -> bytes | None:
    rows = [(r.label, r.mean_run("peak_rss_mb")) for r in data.rows]
    rows = [(n, v) for n, v in rows if v]
    if not rows:
        return None
    fig, ax = _fig(7.5, 0.28 * len(rows) + 1.0)
    ax.barh([n for n, _ in rows][::-1], [v for _, v in rows][::-1], color="#1f6feb")
    ax.set_xlabel("peak RSS of the run's process (MB)")
    return _png(fig)


def xy_series(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str) -> bytes | None:
    if not series:
        return None
    fig, ax = _fig()
    for i, (name, pts) in enumerate(sorted(series.items())):
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="osD^vP"[i % 6],
            ms=4,
            label=name,
            color=_PALETTE[i % len(_PALETTE)],
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)
