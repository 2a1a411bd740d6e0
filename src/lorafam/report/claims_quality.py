"""Claim rules about what a member learns: forgetting, LoRA+'s speed, DoRA vs full fine-tuning, AdaLoRA's spread,
LongLoRA on long-range recall, Quantum-PEFT's quality, MoPEFT's routing."""

from __future__ import annotations

import math
from typing import Any

from lorafam.arena import stats
from lorafam.report.claims_cost import s2_series
from lorafam.report.data import ReportData, Row, paired
from lorafam.report.verdicts import (
    CONTRADICTED,
    MIXED,
    NM,
    STANDARD,
    SUPPORTED,
    UNDECIDED,
    Verdict,
    _combine,
    _iv,
    _members_by_method,
    _pair_args,
    compare,
    diverged,
    learned,
    primary_task,
    settle,
    spikes,
)


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
    reason = "plus_iv_unreached" if ratio["estimate"] is None else "plus_iv"  # never reached: no ratio to print
    return Verdict("loraplus", _combine([speed_v, gain_v]), reason, args, cite)


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
