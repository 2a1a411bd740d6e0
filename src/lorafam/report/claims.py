"""Claims check: each claim of the seed article gets a verdict from explicit rules over measured numbers.

Verdicts: "supported", "contradicted", "undecided", "mixed", "not measurable here". Every difference a rule uses is
a **paired** difference on the same test items (and seeds) with its 95 % bootstrap interval, computed from the
per-item records in the result files (:func:`lorafam.report.data.paired`, :mod:`lorafam.arena.stats`). A claim is
"supported" or "contradicted" only when its interval excludes the threshold the claim implies; otherwise it is
"undecided", and the evidence names the interval and the budget that would settle it. "mixed" is kept for claims
with several parts that go different ways. No language model writes anything; each rule returns a reason key and
the numbers, and :mod:`lorafam.report.text` turns them into zh / en sentences.

Runs from result files without per-item records (schema 1) fall back to the old binomial noise floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lorafam.arena import stats
from lorafam.report.data import ReportData, Row, noise_floor, paired

SUPPORTED, CONTRADICTED, MIXED, NM = "supported", "contradicted", "mixed", "not measurable here"
UNDECIDED = stats.UNDECIDED
STANDARD = "lorafam arena --budget standard"

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
    """The task most members ran (the main budget's dates; add3 in older records)."""
    for t in ("dates", "add3"):
        if t in data.tasks:
            return t
    if not data.tasks:
        return ""
    return max(data.tasks, key=lambda t: sum(bool(r.ok_runs(t)) for r in data.rows))


def _acc(row: Row | None, task: str) -> list[float]:
    return row.accuracies(task) if row else []


def compare(a: Row | None, b: Row | None, task: str) -> tuple[float, float] | None:
    """(mean exact match of a − that of b, half-width) on ``task``; None when either is missing.

    With per-item records the half-width is the larger side of the paired 95 % interval (so "diff > half-width"
    means the interval excludes zero); older records fall back to the binomial noise floor."""
    iv = paired(a, b, task, "em")
    if iv is not None:
        return iv.estimate, max(iv.estimate - iv.low, iv.high - iv.estimate)
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


def _iv(iv: stats.Interval | None, k: float = 100.0) -> dict[str, Any]:
    """An interval as verdict arguments (points for exact match: ``k`` = 100)."""
    if iv is None:
        return {"d": None, "lo": None, "hi": None, "n": None}
    return {"d": k * iv.estimate, "lo": k * iv.low, "hi": k * iv.high, "n": iv.n_items, "seeds": iv.n_seeds}


def _pair_args(a: Row | None, b: Row | None, task: str, prefix: str = "") -> dict[str, Any]:
    """Exact-match (points) and answer-NLL (nats/token) paired differences a − b, as verdict arguments."""
    em, nll = paired(a, b, task, "em"), paired(a, b, task, "nll")
    out = {f"{prefix}{k}": v for k, v in _iv(em).items()}
    out.update({f"{prefix}n{k}": v for k, v in _iv(nll, 1.0).items() if k in ("d", "lo", "hi")})
    return out


def settle(iv: stats.Interval | None, threshold: float, data: ReportData) -> str:
    """What would settle an undecided interval: items at this spread (if the estimate held), or more seeds."""
    if iv is None:
        return STANDARD
    need = stats.items_needed(iv, threshold)
    if need is None:
        return "none: the estimate sits on the threshold"
    return f"eval_items ≥ {need} (or more seeds)"


def diverged(row: Row | None, task: str, lora: Row | None = None) -> str:
    """Why a member's setting is flagged as diverging on ``task`` ('' when it is not): a non-finite loss, a
    smoothed training loss that ends above where it started, or (when ``lora`` is given) general behaviour
    broken by training — a forgetting KL that training added (beyond the value right after the adapter was
    attached, which for QLoRA is the 4-bit base's own) above 1 nat/token and more than 5× LoRA's. An arena that
    ranks such a setting compares a broken run, so the report flags it instead."""
    if row is None:
        return ""
    for r in row.ok_runs(task):
        curve = [v for _, v in r.train_info.loss_curve]
        if any(not math.isfinite(v) for v in curve):
            return "non-finite loss"
        if len(curve) >= 4:
            sm = stats.ema(curve)
            if sm[-1] > sm[1]:
                return f"smoothed loss rose from {sm[1]:.3f} to {sm[-1]:.3f}"
    if lora is None or lora is row:
        return ""

    def drift(w: Row) -> float | None:
        kl = w.mean("forgetting_kl", task)
        start = w.extra("forgetting_kl_start")
        return None if kl is None else kl - (start if isinstance(start, (int, float)) else 0.0)

    d, ld = drift(row), drift(lora)
    if d is not None and ld is not None and ld > 0 and d > 1.0 and d > 5 * ld:
        return f"forgetting KL from training {d:.2f} nats/token = {d / ld:.0f}× LoRA's"
    return ""


def differences(data: ReportData, task: str | None = None) -> list[dict[str, Any]]:
    """Every row − LoRA on ``task`` (default: the primary task): paired exact-match and NLL intervals, and a
    divergence flag. The report's table of differences."""
    task = task or primary_task(data)
    lora = data.row("lorafam", "lora")
    out = []
    for row in data.rows:
        if row is lora or not row.ok_runs(task):
            continue
        em, nll = paired(row, lora, task, "em"), paired(row, lora, task, "nll")
        out.append(
            {
                "impl": row.impl,
                "member": row.member,
                "label": row.label,
                "em": em.to_dict() if em else None,
                "nll": nll.to_dict() if nll else None,
                "flag": diverged(row, task, lora),
            }
        )
    return out


def _combine(parts: list[str]) -> str:
    """One verdict from the verdicts of a claim's parts (all must hold)."""
    if parts and all(p == SUPPORTED for p in parts):
        return SUPPORTED
    if CONTRADICTED in parts:
        return MIXED if SUPPORTED in parts else CONTRADICTED
    return UNDECIDED


def learned(row: Row | None, data: ReportData, task: str) -> bool:
    """Whether ``row`` beat the untrained base on ``task``: the paired interval of its gain lies above zero (True
    when there is no base run: then there is nothing to say it did not)."""
    gain = compare(row, data.row("base", "base"), task)
    return gain is None or gain[0] > gain[1]


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
    """Claim: "LoRA freezes the base model and trains two small matrices" (draft ch. 1): the trainable share of the model."""
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
    """Claim: "QLoRA's 4-bit base is 1/4 the size of a 16-bit base" (draft ch. 2): measured bits per frozen weight over 16."""
    q = _quantized_row(data)
    bits_q, bits_ref = _bits(q), _bits(data.row("lorafam", "lora"))
    cite = "arXiv 2305.14314"
    if bits_q is None or bits_ref is None:
        return Verdict("qlora_quarter", NM, "no_run", {"member": "qlora"}, cite)
    ratio = bits_q / 16.0  # the claim's reference is a 16-bit base, whatever the base is stored in here
    v = SUPPORTED if 0.2 <= ratio <= 0.3 else MIXED
    # beside the storage fact: what the 4-bit base costs in quality (QLoRA − LoRA, paired, same data)
    quality = _pair_args(q, data.row("lorafam", "lora"), primary_task(data))
    return Verdict(
        "qlora_quarter",
        v,
        "quarter_iv" if quality.get("d") is not None else "quarter",
        {
            "bits": bits_q,
            "ref_bits": bits_ref,
            "ratio": ratio,
            "member": q.member,
            "task": primary_task(data),
            **quality,
        },
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
    """Claim: "QLoRA lets a 24 GB card (a 4090) fine-tune a 70B model" (draft ch. 2): 70B weights at the measured bits per weight."""
    bits = _bits(_quantized_row(data))
    cite = "arXiv 2305.14314; arXiv 2307.09288"
    if bits is None:
        return Verdict("qlora_70b", NM, "no_run", {"member": "qlora"}, cite)
    weights = LLAMA2_70B_PARAMS * bits / 8 / 2**30
    est = estimate("llama2-70b", 4)
    args = {"bits": bits, "weights_gib": weights, "estimate_gib": est.total if est else None}
    return Verdict("qlora_70b", CONTRADICTED if weights > 24 else MIXED, "weights_alone", args, cite)


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
    """Claim: "aLoRA keeps latency constant however long the chat" (draft ch. 6): time to first token against history length."""
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
    """Claim: "full fine-tuning is huge, slow and expensive" (draft closing): step time, peak memory and trainable parameters against LoRA."""
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
    """Claim: "adapters are a few hundred MB" (draft closing): the measured adapter file, extrapolated to 7B."""
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


def _curve_points(row: Row, task: str, base: Row | None) -> list[tuple[float, list[float]]] | None:
    """(exact match on the curve items, forgetting KL per general text) from the start of training to its end,
    for the row's first seed: the path along which gain and forgetting grow together."""
    runs = sorted(row.ok_runs(task), key=lambda r: r.run_info.seed)
    if not runs or not runs[0].train_info.evals:
        return None
    t = runs[0].train_info
    k = min(int(e["items"]) for e in t.evals)
    start_kl = t.extra.get("forgetting_kl_texts_start")
    base_em = None
    if base is not None:
        rec = base.final_eval(task)
        base_em = sum(rec["em"][:k]) / k if rec else None
    pts: list[tuple[float, list[float]]] = []
    if start_kl and base_em is not None:
        pts.append((base_em, list(start_kl)))
    for e in t.evals:
        if e.get("forgetting_kl_texts"):
            pts.append((sum(e["em"][:k]) / k, list(e["forgetting_kl_texts"])))
    return pts if len(pts) >= 2 else None


def _kl_at_gain(pts: list[tuple[float, list[float]]], gain: float) -> list[float] | None:
    """Per-text KL where the curve first reaches ``gain`` (linear between evaluation points)."""
    for (g0, k0), (g1, k1) in zip(pts, pts[1:]):
        if g1 >= gain:
            w = 0.0 if g1 == g0 else min(max((gain - g0) / (g1 - g0), 0.0), 1.0)
            return [a + w * (b - a) for a, b in zip(k0, k1)]
    return None


def lora_forgets(data: ReportData) -> Verdict:
    """Claim: "LoRA makes the model forget general knowledge" (draft ch. 1): forgetting KL against the probe floor and against full fine-tuning.

    Forgetting is judged against full fine-tuning at a matched gain on the task: KL(base ‖ tuned) on the
    general prompts, read off each run's learning curve where it first reaches the smaller of the two final
    gains, compared text by text (paired bootstrap over the general texts)."""
    task = primary_task(data)
    lora, base, full = data.row("lorafam", "lora"), data.row("base", "base"), data.row("full", "full-ft")
    kl = lora.mean("forgetting_kl", task) if lora else None
    if kl is None:
        return Verdict("lora_forgets", NM, "no_run", {"member": "lora"})
    floor = (base.mean("forgetting_kl") if base else None) or 0.0
    args: dict[str, Any] = {
        "kl": kl,
        "floor": floor,
        "task": task,
        "full_kl": full.mean("forgetting_kl") if full else None,
    }
    pl = _curve_points(lora, task, base)
    pf = _curve_points(full, task, base) if full else None
    if pl is None or pf is None:
        return Verdict(
            "lora_forgets", NM, "forget_needs_curves", {**args, "budget": "lorafam arena --budget quick"}
        )
    gain = min(pl[-1][0], pf[-1][0])
    args["gain"] = 100 * gain
    kl_l, kl_f = _kl_at_gain(pl, gain), _kl_at_gain(pf, gain)
    if kl_l is None or kl_f is None:
        return Verdict("lora_forgets", NM, "forget_needs_curves", {**args, "budget": STANDARD})
    iv = stats.paired_difference(kl_l, kl_f)
    args.update({"kl_lora": sum(kl_l) / len(kl_l), "kl_full": sum(kl_f) / len(kl_f), **_iv(iv, 1.0)})
    v = stats.decide(iv, 0.0, ">")
    reason = {SUPPORTED: "forget_more", CONTRADICTED: "forget_less"}.get(v, "forget_open")
    args["settle"] = settle(iv, 0.0, data)
    return Verdict("lora_forgets", v, reason, args)


def loraplus_claim(data: ReportData) -> Verdict:
    """Claim: "LoRA+ doubles training speed and adds 1-2 points" (draft ch. 3): accuracy gap to LoRA and steps to LoRA's final loss.

     "Doubles training speed" = LoRA's steps / LoRA+'s steps to reach LoRA's final smoothed training loss (same
    data order, paired curves; threshold 2); "adds 1–2 points" = exact match LoRA+ − LoRA (threshold +1 point)."""
    task = primary_task(data)
    lora, plus = data.row("lorafam", "lora"), data.row("lorafam", "loraplus")
    cite = "arXiv 2402.12354"
    if lora is None or plus is None or not plus.ok_runs(task) or not lora.ok_runs(task):
        return Verdict("loraplus", NM, "no_run", {"member": "loraplus"}, cite)
    em = paired(plus, lora, task, "em")
    args: dict[str, Any] = {"task": task, **_pair_args(plus, lora, task)}
    flag = diverged(plus, task, lora)
    if flag:
        return Verdict("loraplus", MIXED, "plus_flagged", {**args, "flag": flag}, cite)
    by_seed_l = {r.run_info.seed: r.train_info.example_losses for r in lora.ok_runs(task)}
    pairs = []
    for r in sorted(plus.ok_runs(task), key=lambda r: r.run_info.seed):
        ref = by_seed_l.get(r.run_info.seed)
        cand = r.train_info.example_losses
        if ref and cand and len(ref) == len(cand) and all(len(x) == len(y) for x, y in zip(ref, cand)):
            pairs.append((ref, cand))
    if not pairs or em is None:
        return Verdict("loraplus", NM, "plus_needs_curves", args, cite)
    ratio = stats.pooled_steps_ratio(pairs)
    args.update(
        speed=ratio["estimate"],
        speed_lo=ratio["low"],
        speed_hi=ratio["high"],
        unreached=ratio["unreached"],
        reps=ratio["replicates"],
        seeds=ratio["seeds"],
        steps=ratio["steps"],
    )
    speed_iv = stats.Interval(
        ratio["estimate"] or 0.0, ratio["low"], ratio["high"], ratio["batch"], ratio["seeds"]
    )
    speed_v = stats.decide(speed_iv, 2.0, ">")
    gain_v = stats.decide(em, 0.01, ">")
    args.update(speed_v=speed_v, gain_v=gain_v, settle=settle(em, 0.01, data))
    return Verdict("loraplus", _combine([speed_v, gain_v]), "plus_iv", args, cite)


def dora_vs_full(data: ReportData) -> Verdict:
    """Claim: "DoRA beats full fine-tuning on many tasks" (draft ch. 4): DoRA minus full fine-tuning, per task.

    DoRA − full fine-tuning per task, paired: exact match decides (threshold 0); where both sit at the ceiling
    (≥ 95 %) and the exact-match interval is undecided, the answer NLL decides (lower is better)."""
    dora, full = data.row("lorafam", "dora"), data.row("full", "full-ft")
    cite = "arXiv 2402.09353"
    parts, texts = [], []
    for t in data.tasks:
        em, nll = paired(dora, full, t, "em"), paired(dora, full, t, "nll")
        if em is None:
            continue
        v, metric = stats.decide(em, 0.0, ">"), "EM"
        at_ceiling = all((r.mean("accuracy", t) or 0) >= 0.95 for r in (dora, full) if r is not None)
        if v == UNDECIDED and at_ceiling and nll is not None:
            v, metric = stats.decide(nll, 0.0, "<"), "NLL"
        parts.append(v)
        n = "—" if nll is None else f"{nll.estimate:+.4f} [{nll.low:+.4f}, {nll.high:+.4f}]"
        texts.append(
            f"{t}: EM {100 * em.estimate:+.1f} [{100 * em.low:+.1f}, {100 * em.high:+.1f}] pts, NLL {n} "
            f"(n = {em.n_items}; {metric}: {v})"
        )
    if not parts:
        return Verdict("dora_vs_full", NM, "no_run", {"member": "dora / full-ft"}, cite)
    wins, losses = parts.count(SUPPORTED), parts.count(CONTRADICTED)
    args = {"diffs": "; ".join(texts), "wins": wins, "losses": losses, "tasks": len(parts)}
    if wins * 2 >= len(parts) and not losses:
        v = SUPPORTED
    elif losses * 2 >= len(parts) and not wins:
        v = CONTRADICTED
    else:
        v = MIXED if wins and losses else UNDECIDED
    return Verdict("dora_vs_full", v, "dora_iv", args, cite)


def _seed_matrix(row: Row, task: str, metric: str, seeds: list[int]) -> list[list[float]]:
    items = row.items(task, metric)
    return [items[s][1] for s in seeds]


def adalora_unstable(data: ReportData) -> Verdict:
    """Claim: "AdaLoRA is very unstable, be careful in production" (draft ch. 5): failures, loss spikes and seed spread against LoRA's.

     "Very unstable": a failed or diverging AdaLoRA run, or loss spikes well above LoRA's, supports it. Otherwise
    the seed-to-seed spread of the answer NLL is compared with LoRA's on the same ≥ 3 seeds (ratio of standard
    deviations, bootstrap over seeds and items; threshold 2×)."""
    names = _members_by_method("adalora")
    ada = data.row("lorafam", names[0]) if names else None
    lora = data.row("lorafam", "lora")
    cite = "arXiv 2303.10512"
    task = primary_task(data)
    failed = [r for r in data.failed if r.run_info.member in names and r.run_info.impl == "lorafam"]
    if (ada is None or not ada.ok_runs(task)) and not failed:
        return Verdict("adalora_unstable", NM, "no_run", {"member": "adalora"}, cite)
    ok = ada.ok_runs(task) if ada else []
    lora_ok = lora.ok_runs(task) if lora else []
    s_ada = sum(spikes(r.train_info.loss_curve) for r in ok) / max(len(ok), 1)
    s_lora = sum(spikes(r.train_info.loss_curve) for r in lora_ok) / max(len(lora_ok), 1)
    args: dict[str, Any] = {
        "failed": len(failed),
        "runs": len(ok) + len(failed),
        "spikes": s_ada,
        "lora_spikes": s_lora,
        "lr": ok[0].train_info.settings.get("lr") if ok else None,
        "task": task,
        "budget": STANDARD,
    }
    flag = diverged(ada, task)  # training divergence only (a large KL is forgetting, not instability)
    if failed or flag:
        return Verdict("adalora_unstable", SUPPORTED, "ada_failed", {**args, "flag": flag}, cite)
    if s_ada > s_lora + 2:
        return Verdict("adalora_unstable", SUPPORTED, "ada_spiky", args, cite)
    seeds = sorted(set(ada.items(task, "nll")) & set(lora.items(task, "nll"))) if lora else []
    args["seeds"] = len(seeds)
    if len(seeds) < 3:
        return Verdict("adalora_unstable", UNDECIDED, "ada_needs_seeds", args, cite)
    a, b = _seed_matrix(ada, task, "nll", seeds), _seed_matrix(lora, task, "nll", seeds)
    iv = stats.spread_ratio_interval(a, b)
    per = [sum(x) / len(x) for x in a], [sum(x) / len(x) for x in b]
    args.update(
        ada_nll=", ".join(f"{v:.4f}" for v in per[0]),
        lora_nll=", ".join(f"{v:.4f}" for v in per[1]),
        ada_em=", ".join(f"{100 * sum(x) / len(x):.1f}" for x in _seed_matrix(ada, task, "em", seeds)),
        lora_em=", ".join(f"{100 * sum(x) / len(x):.1f}" for x in _seed_matrix(lora, task, "em", seeds)),
    )
    if iv is None:
        return Verdict("adalora_unstable", UNDECIDED, "ada_needs_seeds", args, cite)
    args.update(ratio=iv.estimate, lo=iv.low, hi=iv.high)
    v = stats.decide(iv, 2.0, ">")
    return Verdict("adalora_unstable", v, "ada_spread", args, cite)


def longlora_long_range(data: ReportData) -> Verdict:
    """Claim: "LongLoRA's sliced attention breaks long-range logic" (draft ch. 5): LongLoRA (trained with S2-Attn) against LoRA on the long-range task.

    On the recall task (the answer is more than one S²-Attn group from the question), LongLoRA trained with
    S²-Attn and evaluated with full attention vs LoRA trained with full attention: "breaks long-range reasoning"
    = LongLoRA more than 10 points behind (threshold −10), judged only where LoRA itself learned the task."""
    names = _members_by_method("longlora")
    cite = "arXiv 2309.12307"
    series = s2_series(data.benchmarks.get("s2attn"))
    s2: dict[str, Any] = {"budget": STANDARD}
    if "S²-Attn" in series and "full attention" in series:
        (seq, a), (_, b) = series["S²-Attn"][-1], series["full attention"][-1]
        s2.update({"seq": seq, "s2_ratio": a / b, "file": data.benchmarks["s2attn"]["file"]})
    task = "recall"
    ll = data.row("lorafam", names[0]) if names else None
    lora, base = data.row("lorafam", "lora"), data.row("base", "base")
    if task not in data.tasks or ll is None or not ll.ok_runs(task) or lora is None or not lora.ok_runs(task):
        return Verdict("longlora", NM, "needs_recall_s2" if "seq" in s2 else "needs_recall", s2, cite)
    gain = paired(lora, base, task, "em")
    args = {**s2, **_pair_args(ll, lora, task), "g": None, "glo": None}
    if gain is not None:
        args.update(g=100 * gain.estimate, glo=100 * gain.low, ghi=100 * gain.high)
    if gain is None or gain.low <= 0.2:
        return Verdict("longlora", NM, "ll_lora_not_learned", args, cite)
    em = paired(ll, lora, task, "em")
    v = stats.decide(em, -0.10, "<")
    args["settle"] = settle(em, -0.10, data)
    return Verdict("longlora", v, "ll_recall", args, cite)


def quantum_tenth(data: ReportData) -> Verdict:
    """Claim: "Quantum-PEFT needs 1/10 of LoRA's parameters at equal quality, growing logarithmically" (draft ch. 6): parameter ratio, quality gap and growth exponent.

    Three parts: trainable parameters ≤ 1/10 of LoRA's, growth exponent in the layer width < 0.35 (facts), and
    equal quality = exact match not more than 5 points below LoRA's (interval above −5 supports it, below
    contradicts it; judged only where LoRA beat the base)."""
    names = _members_by_method("quantum")
    cite = "arXiv 2503.05431"
    task = primary_task(data)
    q = data.row("lorafam", names[0]) if names else None
    lora = data.row("lorafam", "lora")
    if q is None or lora is None or not q.ok_runs(task) or not lora.ok_runs(task):
        return Verdict("quantum", NM, "no_run", {"member": names[0] if names else "quantum"}, cite)
    ratio = q.mean("trainable_params") / lora.mean("trainable_params")
    scaling = q.extra("param_scaling")
    slope = None
    if scaling and len(scaling) >= 2 and scaling[0][1] > 0:
        (n0, p0), (n1, p1) = scaling[0], scaling[-1]
        slope = math.log(p1 / p0) / math.log(n1 / n0)
    args: dict[str, Any] = {"ratio": ratio, "slope": slope, "task": task, **_pair_args(q, lora, task)}
    facts = [
        SUPPORTED if ratio <= 0.1 else CONTRADICTED,
        SUPPORTED if slope is not None and slope < 0.35 else CONTRADICTED,
    ]
    if not learned(lora, data, task):
        gain = compare(lora, data.row("base", "base"), task)
        args.update(lora_gain=100 * gain[0] if gain else None, gain_floor=100 * gain[1] if gain else None)
        return Verdict("quantum", MIXED if SUPPORTED in facts else CONTRADICTED, "q_params_noquality", args, cite)
    em = paired(q, lora, task, "em")
    quality = stats.decide(em, -0.05, ">")
    args.update(quality=quality, settle=settle(em, -0.05, data))
    return Verdict("quantum", _combine([*facts, quality]), "q_iv", args, cite)


def mopeft_routes(data: ReportData) -> Verdict:
    """Claim: "MoPEFT routes each input to the best module" (draft ch. 6): what the learned gates do.

    On the mix task (dates and json items), the mixture of a LoRA and a DoRA expert: how its gates split per
    part (mean gate of the LoRA expert per item, 95 % intervals), the difference between the parts, and which
    expert is better alone on each part (LoRA − DoRA answer NLL, paired). Routing that does not depend on the
    part (difference inside ±0.05) contradicts "routes each input"; routing that leans, on each part where one
    expert is better alone, towards that expert supports "to the best module"."""
    from lorafam.arena.tasks import mix_part

    names = _members_by_method("mixture")
    cite = "arXiv 2405.00293"
    row = data.row("lorafam", names[0]) if names else None
    task = "mix"
    if row is None or task not in data.tasks or not row.ok_runs(task):
        cfg = row.ok_runs()[0].train_info.adapter_config if row and row.ok_runs() else {}
        args = {"router": cfg.get("router"), "top_k": cfg.get("top_k"), "budget": STANDARD}
        return Verdict("mopeft", NM, "needs_mix", args, cite)
    run = sorted(row.ok_runs(task), key=lambda r: r.run_info.seed)[0]
    rec, keys = run.train_info.evals[-1] if run.train_info.evals else {}, run.train_info.item_keys
    gates = rec.get("gates") if rec else None
    experts = [
        e.get("method", "?") if isinstance(e, dict) else str(e)
        for e in run.train_info.adapter_config.get("experts", [])
    ]
    if not gates or len(experts) != 2:
        return Verdict("mopeft", NM, "needs_mix", {"router": None, "top_k": None, "budget": STANDARD}, cite)
    parts = {p: [i for i, k in enumerate(keys) if mix_part(k) == p] for p in ("dates", "json")}
    share = {p: [gates[i][0] for i in idx] for p, idx in parts.items()}
    ivs = {p: stats.mean_interval(v) for p, v in share.items() if v}
    if len(ivs) < 2:
        return Verdict("mopeft", NM, "needs_mix", {"router": None, "top_k": None, "budget": STANDARD}, cite)
    split = stats.unpaired_difference(share["dates"], share["json"])
    args: dict[str, Any] = {
        "e0": experts[0],
        "e1": experts[1],
        "g_dates": ivs["dates"].estimate,
        "g_dates_lo": ivs["dates"].low,
        "g_dates_hi": ivs["dates"].high,
        "g_json": ivs["json"].estimate,
        "g_json_lo": ivs["json"].low,
        "g_json_hi": ivs["json"].high,
        "split": split.estimate,
        "split_lo": split.low,
        "split_hi": split.high,
    }
    # each expert alone on the same mix: LoRA − DoRA answer NLL per part (negative: LoRA better)
    a, b = data.row("lorafam", "lora"), data.row("lorafam", "dora")
    best: dict[str, str] = {}
    for p, idx in parts.items():
        if a is None or b is None:
            break
        ia, ib = a.items(task, "nll"), b.items(task, "nll")
        common = sorted(set(ia) & set(ib))
        if not common or ia[common[0]][0] != keys or ib[common[0]][0] != keys:
            continue
        iv = stats.paired_difference(
            [[ia[s][1][i] for i in idx] for s in common], [[ib[s][1][i] for i in idx] for s in common]
        )
        args[f"alone_{p}"] = iv.estimate
        args[f"alone_{p}_lo"] = iv.low
        args[f"alone_{p}_hi"] = iv.high
        v = stats.decide(iv, 0.0, "<")
        best[p] = experts[0] if v == SUPPORTED else experts[1] if v == CONTRADICTED else ""
    args["best_dates"], args["best_json"] = best.get("dates") or "—", best.get("json") or "—"
    if split.low > -0.05 and split.high < 0.05:
        return Verdict("mopeft", CONTRADICTED, "routes_flat", args, cite)
    if not split.excludes(0.0):
        return Verdict("mopeft", UNDECIDED, "routes_open", args, cite)
    leans = experts[0] if split.estimate > 0 else experts[1]  # the expert favoured more on dates than on json
    checks = []
    if best.get("dates"):
        checks.append(best["dates"] == leans)
    if best.get("json"):
        checks.append(best["json"] != leans)
    if not checks:
        return Verdict("mopeft", UNDECIDED, "routes_no_best", args, cite)
    return Verdict("mopeft", SUPPORTED if all(checks) else CONTRADICTED, "routes_best", args, cite)


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
