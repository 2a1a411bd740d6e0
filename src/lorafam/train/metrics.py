"""Run logs: ``metrics.jsonl`` (one JSON object per log line), ``metrics.csv`` and ``loss.png``.

Field names follow LLaMA-Factory's ``trainer_log.jsonl`` (``current_steps``, ``total_steps``, ``loss``,
``eval_loss``, ``lr``, ``epoch``, ``percentage``, ``elapsed_time``, ``remaining_time``, ``throughput``), plus
``grad_norm``, ``tokens_per_second`` and ``eval_ppl``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL log; :meth:`truncate_after` drops lines past a resumed checkpoint."""

    def __init__(self, output_dir: str | Path, enabled: bool = True) -> None:
        self.dir = Path(output_dir)
        self.path = self.dir / "metrics.jsonl"
        self.enabled = enabled

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Keep only lines logged at or before ``step`` (used when resuming)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [r for r in self.rows() if r.get("current_steps", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)

    def write_csv(self) -> Path | None:
        rows = self.rows()
        if not self.enabled or not rows:
            return None
        fields: list[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        out = self.dir / "metrics.csv"
        tmp = out.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, out)
        return out


def _ema(values: list[float], weight: float = 0.8) -> list[float]:
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def plot_loss(rows: list[dict[str, Any]], out: Path) -> Path | None:
    """Training loss (raw and smoothed) and eval loss against the step, as a PNG. None when nothing to plot."""
    train = [(r["current_steps"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])]
    evals = [(r["current_steps"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    xs, ys = zip(*train)
    ax.plot(xs, ys, alpha=0.35, label="train loss")
    ax.plot(xs, _ema(list(ys)), label="train loss (EMA)")
    if evals:
        ex, ey = zip(*evals)
        ax.plot(ex, ey, "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out
