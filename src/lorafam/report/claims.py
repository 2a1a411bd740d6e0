"""Claims check: each claim of the seed article gets a verdict from explicit rules over measured numbers.

Verdicts: "supported", "contradicted", "mixed", "not measurable here". Accuracy differences count only beyond
the noise floor (:func:`lorafam.report.data.noise_floor`: twice the larger of the seed spread and one run's
binomial standard error). No language model writes anything; each rule returns a reason key and the numbers, and
:mod:`lorafam.report.text` turns them into zh / en sentences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lorafam.report.data import ReportData, Row, noise_floor

SUPPORTED, CONTRADICTED, MIXED, NM = "supported", "contradicted", "mixed", "not measurable here"

# Published architecture facts used in extrapolations (cited in the report).
LLAMA2_70B_PARAMS = 70e9  # Touvron et al. 2023, arXiv 2307.09288
LLAMA2_7B_LORA_R16_PARAMS = (
    16 * 32 * (4 * (4096 + 4096) + 2 * (4096 + 11008) + (11008 + 4096))
)  # all 7 projections


@dataclass
class Verdict:
    claim: str  # id; its statement lives in text.CLAIMS
    verdict: str
    reason: str  # key into text.REASONS
    args: dict[str, Any] = field(default_factory=dict)
    cite: str = ""


def _members_by_method(method: str) -> list[str]:
    from lorafam.family import MEMBERS

    return [n for n, m in MEMBERS.items() if m.method == method]


def primary_task(data: ReportData) -> str:
    return "add3" if "add3" in data.tasks else (data.tasks[0] if data.tasks else "")


def _acc(row: Row | None, task: str) -> list[float]:
    return row.accuracies(task) if row else []


def compare(a: Row | None, b: Row | None, task: str) -> tuple[float, float] | None:
    """(mean accuracy of a − mean of b, noise floor) on ``task``; None when either is missing."""
    va, vb = _acc(a, task), _acc(b, task)
    if not va or not vb:
        return None
    n = max(r.train_info.test_items for r in a.ok_runs(task)) if a else 1
    diff = sum(va) / len(va) - sum(vb) / len(vb)
    return diff, max(noise_floor(va, n), noise_floor(vb, n))


def spikes(curve: list[list[float]], warm: int = 3) -> int:
    """Loss spikes: steps after warm-up whose loss exceeds 1.5× the lowest loss seen so far (and is finite)."""
    count, best = 0, math.inf
    for step, loss in curve:
        if not math.isfinite(loss):
            count += 1
            continue
        if step > warm and loss > 1.5 * best:
            count += 1
        best = min(best, loss)
    return count


def _ema(curve: list[list[float]], beta: float = 0.8) -> list[tuple[float, float]]:
    out, m = [], None
    for step, loss in curve:
        m = loss if m is None else beta * m + (1 - beta) * loss
        out.append((step, m))
    return out


def steps_to_reach(curve: list[list[float]], target: float) -> float | None:
    for step, v in _ema(curve):
        if v <= target:
            return step
    return None


# ---------------------------------------------------------------------------------------------------------------
def check_all(data: ReportData) -> list[Verdict]:
    rules = [
        lora_two_matrices,
        lora_forgets,
        qlora_quarter,
        qlora_70b,
        loraplus_claim,
        dora_vs_full,
        adalora_unstable,
        longlora_long_range,
        quantum_tenth,
        mopeft_routes,
        alora_latency,
        full_ft_cost,
        adapter_size,
    ]
    return [rule(data) for rule in rules]


def lora_two_matrices(data: ReportData) -> Verdict:
    lora = data.row("lorafam", "lora")
    cite = "arXiv 2106.09685"
    if lora is None or not lora.ok_runs():
        return Verdict("lora_two_matrices", NM, "no_run", {"member": "lora"}, cite)
    t, total = lora.mean("trainable_params"), lora.mean("total_params")
    pct = 100 * t / total
    return Verdict(
        "lora_two_matrices",
        SUPPORTED if pct < 5 else MIXED,
        "lora_frozen",
        {"trainable": int(t), "total": int(total), "pct": pct, "rank": data.settings.get("rank")},
        cite,
    )


def lora_forgets(data: ReportData) -> Verdict:
    lora, base, full = data.row("lorafam", "lora"), data.row("base", "base"), data.row("full", "full-ft")
    kl = lora.mean("forgetting_kl") if lora else None
    if kl is None:
        return Verdict("lora_forgets", NM, "no_run", {"member": "lora"})
    floor = (base.mean("forgetting_kl") if base else None) or 0.0
    top1 = lora.mean("forgetting_top1")
    full_kl = full.mean("forgetting_kl") if full else None
    args = {"kl": kl, "floor": floor, "top1": top1, "full_kl": full_kl}
    if kl - floor < 0.01:
        return Verdict("lora_forgets", CONTRADICTED, "no_drift", args)
    if full_kl is not None and kl > 1.5 * full_kl:
        return Verdict("lora_forgets", SUPPORTED, "drift_more_than_full", args)
    if kl > 0.1 or (top1 is not None and top1 < 0.9):
        return Verdict("lora_forgets", SUPPORTED if full_kl is None else MIXED, "drift", args)
    return Verdict("lora_forgets", MIXED, "small_drift", args)


def _quantized_row(data: ReportData) -> Row | None:
    for row in data.rows:
        if row.impl == "lorafam" and any(r.train_info.adapter_config.get("quantize") for r in row.ok_runs()):
            return row
    return None


def _bits(row: Row | None) -> float | None:
    if row is None:
        return None
    b, n = row.mean("base_weight_bytes"), row.extra("base_weight_numel")
    return 8 * b / n if b and n else None


def qlora_quarter(data: ReportData) -> Verdict:
    q = _quantized_row(data)
    bits_q, bits_ref = _bits(q), _bits(data.row("lorafam", "lora"))
    cite = "arXiv 2305.14314"
    if bits_q is None or bits_ref is None:
        return Verdict("qlora_quarter", NM, "no_run", {"member": "qlora"}, cite)
    ratio = bits_q / 16.0  # the claim's reference is a 16-bit base, whatever the base is stored in here
    v = SUPPORTED if 0.2 <= ratio <= 0.3 else MIXED
    return Verdict(
        "qlora_quarter",
        v,
        "quarter",
        {"bits": bits_q, "ref_bits": bits_ref, "ratio": ratio, "member": q.member},
        cite,
    )


ESTIMATE_SETUP = {
    "bf16": True,
    "rank": 16,
    "batch_size": 1,
    "seq_len": 512,
    "gradient_checkpointing": True,
    "device": "cuda",
}


def estimate(preset: str, bits: int) -> Any:
    """``lorafam.train.estimate.estimate_memory`` for a named architecture (None when unavailable)."""
    try:
        from lorafam.train.estimate import estimate_memory

        return estimate_memory(preset, quantization_bit=bits, **ESTIMATE_SETUP)
    except Exception:  # noqa: BLE001 - the estimator is optional for the report
        return None


def estimates_table() -> list[tuple[str, int, float, float]]:
    """(model, bits, weights GiB, total GiB) for 7B / 70B at 16 and 4 bits."""
    out = []
    for preset in ("llama2-7b", "llama2-70b"):
        for bits in (16, 4):
            est = estimate(preset, bits)
            if est is not None:
                out.append((preset, bits, est.weights, est.total))
    return out


def qlora_70b(data: ReportData) -> Verdict:
    bits = _bits(_quantized_row(data))
    cite = "arXiv 2305.14314; arXiv 2307.09288"
    if bits is None:
        return Verdict("qlora_70b", NM, "no_run", {"member": "qlora"}, cite)
    weights = LLAMA2_70B_PARAMS * bits / 8 / 2**30
    est = estimate("llama2-70b", 4)
    args = {"bits": bits, "weights_gib": weights, "estimate_gib": est.total if est else None}
    return Verdict("qlora_70b", CONTRADICTED if weights > 24 else MIXED, "weights_alone", args, cite)


def loraplus_claim(data: ReportData) -> Verdict:
    task = primary_task(data)
    lora, plus = data.row("lorafam", "lora"), data.row("lorafam", "loraplus")
    cmp = compare(plus, lora, task)
    cite = "arXiv 2402.12354"
    if cmp is None:
        return Verdict("loraplus", NM, "no_run", {"member": "loraplus"}, cite)
    diff, floor = cmp
    lc, pc = lora.ok_runs(task)[0].train_info.loss_curve, plus.ok_runs(task)[0].train_info.loss_curve
    target = _ema(lc)[-1][1] if lc else None
    reach = steps_to_reach(pc, target) if target is not None else None
    speedup = (lc[-1][0] / reach) if reach else None
    step_ratio = (plus.mean("seconds_per_step") or 0) / (lora.mean("seconds_per_step") or 1)
    args = {
        "diff": 100 * diff,
        "floor": 100 * floor,
        "speedup": speedup,
        "step_ratio": step_ratio,
        "task": task,
        "steps": lc[-1][0] if lc else 0,
    }
    if diff > floor and 100 * diff >= 1 and (speedup or 0) >= 1.8:
        return Verdict("loraplus", SUPPORTED, "plus_both", args, cite)
    if diff < -floor:
        return Verdict("loraplus", CONTRADICTED, "plus_worse", args, cite)
    reason = "plus_within_noise" if abs(diff) <= floor else "plus_partial"
    return Verdict("loraplus", MIXED, reason if speedup else reason + "_noreach", args, cite)


def dora_vs_full(data: ReportData) -> Verdict:
    dora, full = data.row("lorafam", "dora"), data.row("full", "full-ft")
    cite = "arXiv 2402.09353"
    results = [(t, compare(dora, full, t)) for t in data.tasks]
    results = [(t, c) for t, c in results if c is not None]
    if not results:
        return Verdict("dora_vs_full", NM, "no_run", {"member": "dora / full-ft"}, cite)
    wins = sum(1 for _, (d, f) in results if d > f)
    losses = sum(1 for _, (d, f) in results if d < -f)
    args = {
        "wins": wins,
        "losses": losses,
        "tasks": len(results),
        "diffs": ", ".join(f"{t} {100 * d:+.1f} (±{100 * f:.1f})" for t, (d, f) in results),
    }
    if wins * 2 >= len(results) and wins:
        return Verdict("dora_vs_full", SUPPORTED, "dora_wins", args, cite)
    if losses * 2 >= len(results) and losses:
        return Verdict("dora_vs_full", CONTRADICTED, "dora_loses", args, cite)
    return Verdict("dora_vs_full", MIXED, "dora_ties", args, cite)


def adalora_unstable(data: ReportData) -> Verdict:
    names = _members_by_method("adalora")
    ada = data.row("lorafam", names[0]) if names else None
    lora = data.row("lorafam", "lora")
    cite = "arXiv 2303.10512"
    failed = [r for r in data.failed if r.run_info.member in names and r.run_info.impl == "lorafam"]
    if (ada is None or not ada.ok_runs()) and not failed:
        return Verdict("adalora_unstable", NM, "no_run", {"member": "adalora"}, cite)
    ok = ada.ok_runs() if ada else []
    s_ada = sum(spikes(r.train_info.loss_curve) for r in ok) / max(len(ok), 1)
    s_lora = (
        sum(spikes(r.train_info.loss_curve) for r in lora.ok_runs()) / max(len(lora.ok_runs()), 1) if lora else 0
    )
    task = primary_task(data)
    sd = _sd(_acc(ada, task)), _sd(_acc(lora, task))
    args = {
        "failed": len(failed),
        "runs": len(ok) + len(failed),
        "spikes": s_ada,
        "lora_spikes": s_lora,
        "sd": sd[0],
        "lora_sd": sd[1],
        "lr": ok[0].train_info.settings.get("lr") if ok else None,
    }
    if failed or any(not math.isfinite(r.train_info.final_loss or 0) for r in ok):
        return Verdict("adalora_unstable", SUPPORTED, "ada_failed", args, cite)
    if len(ok) < 2 and s_ada <= s_lora + 1:
        args["steps"] = ok[0].train_info.steps if ok else 0
        return Verdict("adalora_unstable", MIXED, "ada_one_run", args, cite)
    calm = s_ada <= s_lora + 1 and (sd[0] is None or sd[1] is None or sd[0] <= 2 * sd[1] + 0.02)
    return Verdict(
        "adalora_unstable", CONTRADICTED if calm else MIXED, "ada_calm" if calm else "ada_noisy", args, cite
    )


def _sd(values: list[float]) -> float | None:
    from lorafam.report.data import spread

    return spread(values)


def s2_series(bench: dict[str, Any] | None) -> dict[str, list[tuple[float, float]]]:
    """{"S²-Attn" | "full attention": [(context length, median step seconds)]} from benchmarks/s2attn.py's file."""
    timing = ((bench or {}).get("data") or {}).get("time") or {}
    out: dict[str, list[tuple[float, float]]] = {}
    for seq, rec in timing.items():
        med = rec.get("median_step_s", {}) if isinstance(rec, dict) else {}
        for key, name in (("s2attn", "S²-Attn"), ("full", "full attention")):
            if isinstance(med.get(key), (int, float)) and str(seq).isdigit():
                out.setdefault(name, []).append((float(seq), float(med[key])))
    return {k: sorted(v) for k, v in out.items()}


def longlora_long_range(data: ReportData) -> Verdict:
    names = _members_by_method("longlora")
    cite = "arXiv 2309.12307"
    series = s2_series(data.benchmarks.get("s2attn"))
    s2 = {}
    if "S²-Attn" in series and "full attention" in series:
        (seq, a), (_, b) = series["S²-Attn"][-1], series["full attention"][-1]
        s2 = {"seq": seq, "s2_ratio": a / b, "file": data.benchmarks["s2attn"]["file"]}
    if "kv" not in data.tasks or not names:
        return Verdict("longlora", NM, "needs_kv_s2" if s2 else "needs_kv", s2, cite)
    cmp = compare(data.row("lorafam", names[0]), data.row("lorafam", "lora"), "kv")
    if cmp is None:
        return Verdict("longlora", NM, "no_run", {"member": names[0]}, cite)
    diff, floor = cmp
    args = {"diff": 100 * diff, "floor": 100 * floor}
    return Verdict("longlora", SUPPORTED if diff < -floor else CONTRADICTED, "ll_kv", args, cite)


def quantum_tenth(data: ReportData) -> Verdict:
    names = _members_by_method("quantum")
    cite = "arXiv 2503.05431"
    q = data.row("lorafam", names[0]) if names else None
    lora = data.row("lorafam", "lora")
    cmp = compare(q, lora, primary_task(data))
    if q is None or lora is None or cmp is None:
        return Verdict("quantum", NM, "no_run", {"member": names[0] if names else "quantum"}, cite)
    ratio = q.mean("trainable_params") / lora.mean("trainable_params")
    scaling = q.extra("param_scaling")
    slope = None
    if scaling and len(scaling) >= 2 and scaling[0][1] > 0:
        (n0, p0), (n1, p1) = scaling[0], scaling[-1]
        slope = math.log(p1 / p0) / math.log(n1 / n0)
    diff, floor = cmp
    args = {"ratio": ratio, "diff": 100 * diff, "floor": 100 * floor, "slope": slope}
    small = [ratio <= 0.1, slope is not None and slope < 0.35]
    if not learned(lora, data, primary_task(data)):
        # "equal quality" needs a quality to be equal to: LoRA itself did not beat the untrained base here
        gain = compare(lora, data.row("base", "base"), primary_task(data))
        args.update(lora_gain=100 * gain[0] if gain else None, gain_floor=100 * gain[1] if gain else None)
        return Verdict("quantum", MIXED if any(small) else CONTRADICTED, "q_params_noquality", args, cite)
    parts = [*small, abs(diff) <= floor or diff > 0]
    verdict = SUPPORTED if all(parts) else CONTRADICTED if not any(parts) else MIXED
    return Verdict("quantum", verdict, "q_params", args, cite)


def learned(row: Row | None, data: ReportData, task: str) -> bool:
    """Whether ``row`` beat the untrained base on ``task`` by more than the noise floor (True when no base run:
    then there is nothing to say it did not)."""
    gain = compare(row, data.row("base", "base"), task)
    return gain is None or gain[0] > gain[1]


def mopeft_routes(data: ReportData) -> Verdict:
    names = _members_by_method("mixture")
    cite = "arXiv 2405.00293"
    row = data.row("lorafam", names[0]) if names else None
    if row is None or not row.ok_runs():
        return Verdict("mopeft", NM, "no_run", {"member": names[0] if names else "mopeft"}, cite)
    cfg = row.ok_runs()[0].train_info.adapter_config
    top_k = cfg.get("top_k")
    cmp = compare(row, data.row("lorafam", "lora"), primary_task(data))
    args = {
        "router": cfg.get("router"),
        "top_k": top_k,
        "diff": 100 * cmp[0] if cmp else None,
        "floor": 100 * cmp[1] if cmp else None,
    }
    return Verdict("mopeft", MIXED, "soft_gates" if not top_k else "topk_gates", args, cite)


def _ttft_series(bench: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """{series: [(history tokens, seconds)]} from an aLoRA TTFT results file.

    Understands ``benchmarks/alora_ttft.py`` (``rows`` with ``history_tokens``, ``threads`` and ``median_ms`` per
    path; the largest thread count is used) and, generically, records with a history field and ``*ttft*`` keys.
    """
    data = bench.get("data")
    records = (
        data
        if isinstance(data, list)
        else next((v for v in (data or {}).values() if isinstance(v, list) and v and isinstance(v[0], dict)), [])
    )
    records = [r for r in records if isinstance(r, dict)]
    threads = [r["threads"] for r in records if isinstance(r.get("threads"), int)]
    if threads:
        records = [r for r in records if r.get("threads") == max(threads)]
    series: dict[str, list[tuple[float, float]]] = {}
    for rec in records:
        x = next((v for k, v in rec.items() if "hist" in k.lower() or "context" in k.lower()), None)
        if not isinstance(x, (int, float)):
            continue
        values = {k: v / 1000 for k, v in (rec.get("median_ms") or {}).items() if isinstance(v, (int, float))}
        values.update({k: v for k, v in rec.items() if "ttft" in k.lower() and isinstance(v, (int, float))})
        for k, v in values.items():
            series.setdefault(k, []).append((float(x), float(v)))
    return {k: sorted(v) for k, v in series.items() if len(v) >= 2}


def alora_latency(data: ReportData) -> Verdict:
    cite = "arXiv 2504.12397; arXiv 2512.17910"
    bench = data.benchmarks.get("alora_ttft")
    series = _ttft_series(bench) if bench else {}
    if not series:
        return Verdict("alora", NM, "needs_bench", {"script": "benchmarks/alora_ttft.py"}, cite)
    growth = {k: v[-1][1] / v[0][1] for k, v in series.items() if v[0][1] > 0}
    # the claim is about aLoRA with the history's cache reused: judge the reuse path(s), not base decoding
    reuse = {k: g for k, g in growth.items() if "reuse" in k.lower() and "prefill" not in k.lower()} or growth
    flat_name = min(reuse, key=reuse.get)
    flat = reuse[flat_name]
    steep = max(growth.values())
    x0, x1 = next(iter(series.values()))[0][0], next(iter(series.values()))[-1][0]
    args = {
        "file": bench["file"],
        "flat": flat,
        "steep": steep,
        "x0": x0,
        "x1": x1,
        "flat_name": flat_name,
        "steep_name": max(growth, key=growth.get),
    }
    return Verdict("alora", SUPPORTED if flat <= 1.5 else MIXED, "ttft", args, cite)


def full_ft_cost(data: ReportData) -> Verdict:
    full, lora = data.row("full", "full-ft"), data.row("lorafam", "lora")
    if full is None or lora is None or not full.ok_runs() or not lora.ok_runs():
        return Verdict("full_ft", NM, "no_run", {"member": "full-ft"})
    step = (full.mean("seconds_per_step") or 0) / (lora.mean("seconds_per_step") or 1)
    rss = (full.mean_run("peak_rss_mb") or 0) / (lora.mean_run("peak_rss_mb") or 1)
    params = full.mean("trainable_params") / max(lora.mean("trainable_params") or 1, 1)
    ckpt = full.extra("checkpoint_bytes_bf16_computed")
    lora_bytes = lora.mean("adapter_bytes")
    args = {
        "step": step,
        "rss": rss,
        "params": params,
        "ckpt_ratio": ckpt / lora_bytes if ckpt and lora_bytes else None,
    }
    hits = (step > 1.2) + (rss > 1.05)
    return Verdict("full_ft", SUPPORTED if hits == 2 else MIXED if hits else CONTRADICTED, "ft_cost", args)


def adapter_size(data: ReportData) -> Verdict:
    lora = data.row("lorafam", "lora")
    if lora is None or not lora.mean("adapter_bytes"):
        return Verdict("adapter_size", NM, "no_run", {"member": "lora"})
    b, t = lora.mean("adapter_bytes"), lora.mean("trainable_params")
    per = b / t
    est = estimate("llama2-7b", 16)
    mb7 = (est.trainable_params if est else LLAMA2_7B_LORA_R16_PARAMS) * per / 1e6
    model = data.settings.get("model", "default")
    args = {
        "mb": b / 1e6,
        "per_param": per,
        "mb7": mb7,
        "rank": data.settings.get("rank"),
        "model": "SmolLM2-135M-Instruct" if model == "default" else model,
    }
    v = MIXED if 100 <= mb7 < 1000 else CONTRADICTED
    return Verdict("adapter_size", v, "size", args, "arXiv 2307.09288")


# ---------------------------------------------------------------------------------------------------------------
# Bibliographic checks: facts from the registry and shared/FAMILY.md (sources cited in each entry).
BIBLIO: list[tuple[str, str, str]] = [
    ("b_longlora_plus", CONTRADICTED, "arXiv 2309.12307; arXiv 2402.12354"),
    ("b_longlora_100k", CONTRADICTED, "LongLoRA README model table (dvlab-research/LongLoRA)"),
    (
        "b_mopeft_venue",
        MIXED,
        "arXiv 2405.00293 (comment: CVPR 2024 workshop); CVPRW 2025 proceedings pp. 6500–6510",
    ),
    ("b_alora_venue", NM, "arXiv 2504.12397 (preprint, IBM Research, 2025)"),
    ("b_quantum_code", CONTRADICTED, "ICLR 2025 poster, OpenReview dgR6i4TSng; arXiv 2503.05431"),
]
