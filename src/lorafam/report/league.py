"""The league table: one row per member (accuracy per task ± seed spread, forgetting, speed, memory, size,
decode, merge), as formatted cells and as the raw numbers behind them."""

from __future__ import annotations

from typing import Any

from lorafam.report.data import ReportData, Row, spread
from lorafam.report.text import UI


def _f(v: float | None, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def acc_cell(row: Row, task: str) -> str:
    """Mean exact match in percent, ± the seed spread when there are two or more seeds; "failed" / "—"."""
    acc = row.accuracies(task)
    if not acc:
        return (
            "failed" if any(r.run_info.task == task and r.run_info.status == "failed" for r in row.runs) else "—"
        )
    mean = 100 * sum(acc) / len(acc)
    sd = spread(acc)
    return f"{mean:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def league(data: ReportData) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """(header keys, formatted rows, raw rows). Raw rows hold the unformatted numbers for traceability."""
    keys = (
        ["member", "params"]
        + [f"acc:{t}" for t in data.tasks]
        + ["kl", "step", "tok", "rss", "size", "decode", "merge"]
    )
    rows, raw = [], []
    for row in data.rows:
        r = _raw_row(data, row)
        dec, dec_base = r["decode"], r["decode_base"]
        raw.append(r)
        rows.append(
            [
                row.label,
                "—" if r["params"] is None else f"{int(r['params']):,}",
                *[acc_cell(row, t) for t in data.tasks],
                _f(r["kl"], ".3f"),
                _f(r["step"], ".2f"),
                _f(r["tok"], ".0f"),
                _f(r["rss"], ".0f"),
                _f(r["size"] / 1e6 if r["size"] else None, ".2f"),
                "—" if dec is None else f"{dec:.1f}" + (f" ({dec / dec_base:.2f}×)" if dec_base else ""),
                _f(r["merge"], ".3f"),
            ]
        )
    return keys, rows, raw


def _raw_row(data: ReportData, row: Row) -> dict[str, Any]:
    return {
        "impl": row.impl,
        "member": row.member,
        "params": row.mean("trainable_params"),
        **{f"acc:{t}": row.accuracies(t) for t in data.tasks},
        "kl": row.mean("forgetting_kl"),
        "step": row.mean("seconds_per_step"),
        "tok": row.mean("tokens_per_second"),
        "rss": row.mean_run("peak_rss_mb"),
        "size": row.mean("adapter_bytes"),
        "decode": row.mean("decode_tokens_per_s"),
        "decode_base": row.mean("decode_tokens_per_s_base"),
        "merge": row.mean("merge_seconds"),
    }


def headers(lang: str, data: ReportData) -> list[str]:
    u = UI[lang]
    accs = [u["col_acc"].format(task=t) for t in data.tasks]
    return [
        u["col_member"],
        u["col_params"],
        *accs,
        u["col_kl"],
        u["col_step"],
        u["col_tok"],
        u["col_rss"],
        u["col_size"],
        u["col_decode"],
        u["col_merge"],
    ]
