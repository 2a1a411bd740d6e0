"""The report's data model, built from arena result files only (plus benchmark results files, when present).

Everything the article says is derived here or in :mod:`lorafam.report.claims`; the renderers only format.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafam.arena import stats
from lorafam.arena.results import RunResult, load_results

IMPL_ORDER = {"base": 0, "lorafam": 1, "peft": 2, "full": 3}


@dataclass
class Row:
    """One (implementation, member) over its seeds, per task."""

    impl: str
    member: str
    label: str
    runs: list[RunResult] = field(default_factory=list)

    def ok_runs(self, task: str | None = None) -> list[RunResult]:
        return [r for r in self.runs if r.run_info.status == "ok" and (task is None or r.run_info.task == task)]

    def accuracies(self, task: str) -> list[float]:
        return [r.train_info.accuracy for r in self.ok_runs(task) if r.train_info.accuracy is not None]

    def mean(self, attr: str, task: str | None = None) -> float | None:
        vals = [getattr(r.train_info, attr) for r in self.ok_runs(task)]
        vals = [v for v in vals if v is not None]
        return statistics.fmean(vals) if vals else None

    def mean_run(self, attr: str) -> float | None:
        vals = [getattr(r.run_info, attr) for r in self.ok_runs()]
        vals = [v for v in vals if v]
        return statistics.fmean(vals) if vals else None

    def final_eval(self, task: str, seed: int | None = None) -> dict[str, Any] | None:
        """The per-item record after training (the last ``evals`` entry) of the run on ``task`` (and ``seed``)."""
        for r in sorted(self.ok_runs(task), key=lambda r: r.run_info.seed):
            if (seed is None or r.run_info.seed == seed) and r.train_info.evals:
                return r.train_info.evals[-1]
        return None

    def items(self, task: str, metric: str = "em") -> dict[int, tuple[list[str], list[float]]]:
        """seed → (item keys, per-item values after training) for ``metric``: "em" (0/1), "nll" (answer NLL per
        token, nats) or "nll_sum" (summed over the answer)."""
        out: dict[int, tuple[list[str], list[float]]] = {}
        for r in self.ok_runs(task):
            t = r.train_info
            if not t.evals:
                continue
            values = item_values(t.evals[-1], metric)
            out[r.run_info.seed] = (list(t.item_keys)[: len(values)], values)
        return out

    def extra(self, key: str) -> Any:
        for r in self.ok_runs():
            if key in r.train_info.extra:
                return r.train_info.extra[key]
        return None


@dataclass
class ReportData:
    folder: Path
    budget: str
    rows: list[Row]
    tasks: list[str]
    seeds: list[int]
    settings: dict[str, Any]
    meta: dict[str, Any]
    failed: list[RunResult]
    skipped: list[RunResult]
    kept_apart: list[tuple[str, RunResult]]  # (file, result) from another version / machine
    problems: list[str]
    manifest: dict[str, Any]
    benchmarks: dict[str, Any]

    def row(self, impl: str, member: str) -> Row | None:
        for r in self.rows:
            if r.impl == impl and r.member == member:
                return r
        return None


def label(impl: str, member: str) -> str:
    if impl == "peft":
        return f"{member} (PEFT)"
    return member


def resolve_folder(results: str | Path, budget: str | None = None) -> tuple[Path, str]:
    """The budget folder to report on: ``budget`` or the one the last arena wrote (``latest.json``)."""
    root = Path(results)
    if budget is None:
        latest = root / "latest.json"
        if latest.is_file():
            budget = json.loads(latest.read_text(encoding="utf-8"))["budget"]
        else:
            found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            if not found:
                raise ValueError(f"no arena results under {str(root)!r}; run `lorafam arena` first")
            budget = found[0]
    folder = root / budget
    if not folder.is_dir():
        raise ValueError(f"no results for budget {budget!r} under {str(root)!r}")
    return folder, budget


def load(results: str | Path, budget: str | None = None, bench_dir: str | Path | None = None) -> ReportData:
    """Read every result file of one arena budget and group it (runs from other environments kept apart)."""
    folder, budget = resolve_folder(results, budget)
    found, problems = load_results(folder)
    main_env = _main_env([r for _, r in found if "_kept-apart" not in str(_)])
    rows: dict[tuple[str, str], Row] = {}
    failed, skipped, kept = [], [], []
    tasks, seeds = set(), set()
    for path, r in found:
        if "_kept-apart" in path.parts or r.meta_info.env_key != main_env:
            kept.append((path.name, r))
            continue
        ri = r.run_info
        key = (ri.impl, ri.member)
        rows.setdefault(key, Row(ri.impl, ri.member, label(ri.impl, ri.member))).runs.append(r)
        tasks.add(ri.task)
        seeds.add(ri.seed)
        if ri.status == "failed":
            failed.append(r)
        elif ri.status == "skipped":
            skipped.append(r)
    ordered = sorted(rows.values(), key=lambda w: (_member_order(w.member), IMPL_ORDER.get(w.impl, 9)))
    mains = [r for _, r in found if r.meta_info.env_key == main_env]
    manifest_path = folder / "arena.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    settings = _common_settings(mains)
    meta = mains[-1].meta_info.__dict__ if mains else {}
    return ReportData(
        folder,
        budget,
        ordered,
        sorted(tasks),
        sorted(seeds),
        settings,
        meta,
        failed,
        skipped,
        kept,
        problems,
        manifest,
        load_benchmarks(bench_dir),
    )


def _main_env(results: list[RunResult]) -> str:
    """The environment of the newest run: the report's reference; others are kept apart."""
    if not results:
        return ""
    newest = max(results, key=lambda r: r.run_info.started_at)
    return newest.meta_info.env_key


def _member_order(member: str) -> tuple[int, int]:
    from lorafam.family import family

    names = [m.name for m in family()]
    if member == "base":
        return (0, 0)
    if member in names:
        return (1, names.index(member))
    return (2, 0)


def _common_settings(results: list[RunResult]) -> dict[str, Any]:
    """Settings shared by the adapter runs (the budget line of the method notes)."""
    adapter_runs = [r for r in results if r.run_info.impl == "lorafam" and r.train_info.settings]
    if not adapter_runs:
        return results[0].train_info.settings if results else {}
    first = adapter_runs[0].train_info.settings
    return {k: v for k, v in first.items() if all(r.train_info.settings.get(k) == v for r in adapter_runs)}


def load_benchmarks(bench_dir: str | Path | None) -> dict[str, Any]:
    """Latest results files of the benchmark scripts the report cites (aLoRA TTFT, S²-Attn step time)."""
    out: dict[str, Any] = {}
    if bench_dir is None:
        return out
    root = Path(bench_dir)
    for key, patterns in (("alora_ttft", ("alora_ttft*.json", "alora*.json")), ("s2attn", ("s2attn*.json",))):
        files = sorted({p for pat in patterns for p in root.glob(pat)}, key=lambda p: p.stat().st_mtime)
        if files:
            try:
                out[key] = {"file": files[-1].name, "data": json.loads(files[-1].read_text(encoding="utf-8"))}
            except (OSError, json.JSONDecodeError):
                continue
    return out


# ---------------------------------------------------------------------------------------------------------------
def item_values(record: dict[str, Any], metric: str) -> list[float]:
    """Per-item values of one ``evals`` record: "em", "nll" (per answer token) or "nll_sum"."""
    if metric == "em":
        return [float(v) for v in record["em"]]
    if metric == "nll":
        return [n / max(t, 1) for n, t in zip(record["nll"], record["tokens"])]
    if metric == "nll_sum":
        return [float(v) for v in record["nll"]]
    raise ValueError(f"unknown metric {metric!r}; valid: em, nll, nll_sum")


def paired(a: Row | None, b: Row | None, task: str, metric: str = "em") -> stats.Interval | None:
    """mean(a − b) on ``task`` with its 95 % paired bootstrap interval (items, and seeds both sides ran).

    Pairing: the same item keys in the same order on both sides, on the seeds both have. The untrained base runs
    once (nothing in it depends on the seed) and is paired with every seed of the other side. None when either side has no per-item records or the items differ.
    """
    if a is None or b is None:
        return None
    ia, ib = a.items(task, metric), b.items(task, metric)
    if not ia or not ib:
        return None
    if a.impl == "base" and len(ia) == 1:
        ia = {sd: next(iter(ia.values())) for sd in ib}
    if b.impl == "base" and len(ib) == 1:
        ib = {sd: next(iter(ib.values())) for sd in ia}
    seeds = sorted(set(ia) & set(ib))
    rows_a, rows_b = [], []
    for sd in seeds:
        (ka, va), (kb, vb) = ia[sd], ib[sd]
        if ka != kb or len(va) != len(vb):
            return None
        rows_a.append(va)
        rows_b.append(vb)
    if not rows_a:
        return None
    return stats.paired_difference(rows_a, rows_b)


def spread(values: list[float]) -> float | None:
    """Sample standard deviation over seeds (None with fewer than two)."""
    return statistics.stdev(values) if len(values) >= 2 else None


def noise_floor(values: list[float], n_items: int) -> float:
    """The smallest accuracy difference the report treats as real: twice the larger of the seed spread and the
    binomial standard error of one run (√(p(1−p)/n), with p clipped to [0.1, 0.9])."""
    p = statistics.fmean(values) if values else 0.5
    p = min(max(p, 0.1), 0.9)
    se = math.sqrt(p * (1 - p) / max(n_items, 1))
    sd = spread(values) or 0.0
    return 2 * max(se, sd)
