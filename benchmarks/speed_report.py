"""The ``speed`` section of BENCHMARKS.md, built only from ``benchmarks/results/speed.json``.

python -m benchmarks.speed_report     # rewrite the section (and the summary) from the last results file
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, md_table, update_markdown_section, write_json
from benchmarks.speed_parts import s2step_lengths

SECTION = "speed"


def _row(target: str, r: dict[str, Any] | None, limit: float, higher: bool = False, note: str = "") -> dict:
    """One target: the paired median with its min–max spread, and whether the median meets the limit."""
    if r is None:
        return {
            "target": target,
            "limit": f"{'≥' if higher else '≤'} {limit}",
            "measured": "not measured",
            "status": "not measured",
            "note": note,
        }
    med = r["median"]
    ok = med >= limit if higher else med <= limit
    spread = f" ({r['min']:.3f}–{r['max']:.3f})" if "min" in r else ""
    return {
        "target": target,
        "limit": f"{'≥' if higher else '≤'} {limit}",
        "value": med,
        "measured": f"{med:.3f}{spread}",
        "status": "met" if ok else "missed",
        "note": note,
    }


def summary(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured ratio from this run."""
    tr = (d.get("train") or {}).get("ratios", {})
    gen = (d.get("gen") or {}).get("x_base", {})
    rss = (d.get("rss") or {}).get("ratios", {})
    s2 = d.get("s2") or {}
    shape = (d.get("train") or {}).get("shape", {})
    at = f"batch {shape['batch']}×{shape['seq']}" if shape else ""
    arena = f"batch {shape['arena_batch']}×{shape['arena_seq']}" if shape else "the arena's shape"
    rows = [
        _row("DoRA train step / LoRA's", tr.get("dora / lora"), 1.10, note=at),
        _row(
            "DoRA train step / LoRA's, issue shape",
            tr.get("dora / lora, issue shape"),
            1.10,
            note=(
                f"batch {shape['issue_batch']}×{shape['issue_seq']}, the shape the issue measured"
                if "issue_batch" in shape
                else "not in this run"
            ),
        ),
        _row(
            "LoRA train step / PEFT LoRA's", tr.get("lora / peft-lora"), 1.0, note=f"{at} (issue: 0.96, keep it)"
        ),
        _row("QLoRA train step / fp32 LoRA's", tr.get("qlora / lora"), 1.2, note=at),
        _row("QLoRA train step / fp32 LoRA's, arena shape", tr.get("qlora / lora, arena shape"), 1.2, note=arena),
        _row("QLoRA peak RSS / fp32 LoRA's", _single(rss.get("qlora / lora")), 1.0, note="own process each"),
        _row("unmerged LoRA decoding, × base tokens/s", gen.get("lora"), 0.90, True, "batch 1, KV cache, greedy"),
        _row("unmerged DoRA decoding, × base tokens/s", gen.get("dora"), 0.90, True, "batch 1, KV cache, greedy"),
    ]
    step = d.get("s2step") or {}
    for n, limit in (("4096", 0.70), ("2048", 0.85)):
        note = (f"whole LongLoRA step (fwd + bwd + AdamW), batch 1, {step['threads']} threads" if step
                else "whole LongLoRA step: not in this run (see the notes below the table)")  # fmt: skip
        if (step.get(n) or {}).get("not_measured"):
            note = f"whole LongLoRA step: {step[n]['not_measured']}"
        elif step and n not in step:
            note = "whole LongLoRA step: this length was not in the run's --s2-seqs"
        rows.append(_row(f"S²-Attn training step / full attention's at {n}", (step.get(n) or {}).get("s2 / full"),
                         limit, note=note))  # fmt: skip
    for n in ("4096", "2048"):  # diagnostic: the only call S²-Attn changes (no target of its own)
        row = _row(f"(S²-Attn attention call / full at {n})", (s2.get(n) or {}).get("s2 / full"), 1.0,
                   note="one layer's attention call, fwd + bwd, 1 thread; diagnostic")  # fmt: skip
        row["status"] = "diagnostic" if row["status"] != "not measured" else row["status"]
        rows.append(row)
    m = d.get("machine") or {}
    if "bf16_auto" in m:
        auto = m["bf16_auto"]
        faster = m["gemm"]["bfloat16"]["peak_gflops"] > 1.2 * m["gemm"]["float32"]["peak_gflops"]
        rows.append({
            "target": "bf16: auto picks fp32 where bf16 is slower",
            "limit": "fp32 unless bf16 ≥ 1.2× faster",
            "measured": "bf16" if auto["uses_bf16"] else "fp32",
            "status": "met" if auto["uses_bf16"] == faster else "missed",
            "note": auto["why"],
        })  # fmt: skip
        rows += _bf16_rows(d, m)
    return rows


def _bf16_rows(d: dict[str, Any], m: dict[str, Any]) -> list[dict[str, Any]]:
    """The AMX target: a LoRA step in lorafam's bf16 regime ≤ 0.5× PEFT's fp32 step, at matching loss."""
    gemm = f"bf16 / fp32 GEMM throughput here: {m['gemm']['bfloat16']['peak_gflops'] / m['gemm']['float32']['peak_gflops']:.2f}×"
    b = (d.get("train") or {}).get("bf16") or {}
    if "ratios" not in b:
        why = b.get("skipped") or ("no AMX" if not m["amx"] else "no train part in this run")
        return [{"target": "LoRA step in the bf16 regime / PEFT fp32's (AMX CPUs)", "limit": "≤ 0.5",
                 "measured": "not measured", "status": f"n/a: {why}", "note": gemm}]  # fmt: skip
    loss = (d.get("bf16loss") or {}).get("max_rel_diff") or {}
    steps = (d.get("bf16loss") or {}).get("steps")
    rows = []
    for key, label, lkey in (("lora bf16 / peft-lora", "eager", "bf16"),
                             ("lora bf16 compiled / peft-lora", "torch_compile: true", "bf16 compiled")):  # fmt: skip
        row = _row(f"LoRA step in the bf16 regime ({label}) / PEFT fp32's", b["ratios"][key], 0.5)
        drift = loss.get(lkey)
        note = f"{gemm}; loss: " + (f"largest relative difference to fp32 over the first {steps} steps "
                                    f"{100 * drift:.2f} % (≤ 2 %)" if drift is not None
                                    else "not compared in this run")  # fmt: skip
        if label != "eager":
            note += f"; compiling took {b['compile_first_step_s']:.0f} s of the first step"
        if drift is None or drift > 0.02:
            row["status"] = "missed" if drift is not None else "not measured (loss)"
        row["note"] = note
        rows.append(row)
    return rows


def _single(v: float | None) -> dict[str, Any] | None:
    return None if v is None else {"median": v}


def _machine_line(d: dict[str, Any]) -> str:
    m = d["machine"]
    amx = "amx_bf16" in m["cpu_flags"]
    return (
        f"Machine: **{m['cpu']}**, AMX: **{'yes' if amx else 'no'}** (flags: {', '.join(m['cpu_flags']) or 'none'}; "
        f"torch capability {m['torch_cpu_capability']}, oneDNN bf16 {m['onednn_bf16_supported']}), "
        f"{m['logical_cpus']} logical CPUs, {m['torch_threads']} torch thread(s); load average "
        f"{d.get('load_average_start')} at the start and {d.get('load_average_end')} at the end"
        + (
            ": the machine was loaded, so absolute times are inflated and only the paired ratios are meant to be read"
            if _loaded(d, m["logical_cpus"])
            else ""
        )  # fmt: skip
        + f". Per part (load at its start → end, minutes): {_part_loads(d)}. torch "
        f"{m['versions']['torch']}, transformers {m['versions']['transformers']}, peft {m['versions']['peft']}; "
        f"{m['time_utc']}, git {m['git']['commit'][:10]}{' (dirty)' if m['git']['dirty'] else ''}."
    )


def _loaded(d: dict[str, Any], cpus: int) -> bool:
    """Whether other work competed for the CPUs: a 1-minute load above what this run itself puts on them (its
    torch threads, or the whole S² step's threads when that part ran), with half a CPU of slack; a run on fewer
    threads than CPUs is judged against 0.75 × the CPUs at most."""
    loads = [d.get("load_average_start") or [0], d.get("load_average_end") or [0]]
    own = max(
        int((d.get("machine") or {}).get("torch_threads") or 1), int((d.get("s2step") or {}).get("threads") or 1)
    )
    return max(x[0] for x in loads) > max(own + 0.5, 0.75 * cpus)


def _part_loads(d: dict[str, Any]) -> str:
    parts = [
        p for p in ("machine", "train", "bf16loss", "rss", "gen", "s2", "s2step") if isinstance(d.get(p), dict)
    ]
    return "; ".join(
        f"{p} {d[p]['load_start'][0]} → {d[p]['load_end'][0]}, {d[p]['wall_s'] / 60:.1f}"
        for p in parts
        if "load_start" in d[p]
    )


def _detail_tables(d: dict[str, Any]) -> list[str]:
    out: list[str] = []
    m, t = d.get("machine"), d.get("train")
    if t and m and "gemm" in m:
        peaks = {"fp32": m["gemm"]["float32"]["peak_gflops"], "bf16": m["gemm"]["bfloat16"]["peak_gflops"]}

        def of_peak(arm: str) -> str:  # a bf16-regime arm against the bf16 peak, the others against fp32's
            if arm not in t["achieved_gflops"]:
                return "—"
            dtype = "bf16" if "bf16" in arm else "fp32"
            return f"{100 * t['achieved_gflops'][arm] / peaks[dtype]:.0f}% of {dtype}"

        rows = [(arm, v["median_s"], v["min_s"], v["max_s"], t["achieved_gflops"].get(arm, "—"), of_peak(arm))
                for arm, v in t["timing"].items()]  # fmt: skip
        out += ["", "Train steps (median of the interleaved rounds; GFLOP/s from torch's flop counter; the bf16 arms "
                    "are lorafam's bf16 regime as `lorafam train --bf16` runs it, against the bf16 GEMM peak):", ""]  # fmt: skip
        out += [md_table(["arm", "median s", "min s", "max s", "achieved GFLOP/s", "of the GEMM peak"], rows)]
    if m and "gemm" in m:
        g = m["gemm"]
        rows = [(name, *g["shapes"][name], g["float32"]["per_shape_gflops"][name],
                 g["bfloat16"]["per_shape_gflops"][name]) for name in g["shapes"]]  # fmt: skip
        rows.append(
            ("step mix (FLOP-weighted)", "", "", "", g["float32"]["peak_gflops"], g["bfloat16"]["peak_gflops"])
        )
        out += ["", "This machine's GEMM peak at the model's own shapes (`F.linear`, GFLOP/s):", ""]
        out += [md_table(["GEMM", "tokens", "in", "out", "fp32", "bf16"], rows)]
    bl = d.get("bf16loss")
    if bl and "curves" in bl:
        c = bl["curves"]
        rows = [(i + 1, c["fp32"][i], c["bf16"][i], c["bf16 compiled"][i], 100 * bl["rel_diff_per_step"]["bf16"][i],
                 100 * bl["rel_diff_per_step"]["bf16 compiled"][i]) for i in range(bl["steps"])]  # fmt: skip
        out += ["", f"bf16 regime vs fp32, LoRA from the same initialisation on the same text (batch "
                    f"{bl['shape']['batch']}×{bl['shape']['seq']}, lr {bl['lr']}), loss per step:", ""]  # fmt: skip
        out += [md_table(["step", "fp32", "bf16", "bf16 compiled", "bf16 Δ %", "compiled Δ %"], rows)]
    r = d.get("rss")
    if r:
        rows = [(arm, v["peak_rss_mib"], v["source"]) for arm, v in r["arms"].items()]
        out += ["", f"Peak RSS, each arm training {r['steps']} steps in its own process:", ""]
        out += [md_table(["arm", "peak RSS MiB", "measured as"], rows)]
    gen = d.get("gen")
    if gen:
        cpu = gen.get("x_base_cpu", {})
        rows = [(k, gen["tokens_per_s"][k], gen["per_token_s"][k]["median_s"] * 1e3,
                 *((gen["x_base"][k]["median"], gen["x_base"][k]["min"], gen["x_base"][k]["max"])
                   if k in gen["x_base"] else (1.0, "", "")),
                 cpu[k]["median"] if k in cpu else ("" if cpu else "—"))
                for k in gen["per_token_s"]]  # fmt: skip
        out += ["", f"Decoding, {gen['new_tokens']} greedy tokens per round after a {gen['prompt_tokens']}-token "
                    "prompt, interleaved token by token (ratios paired per token; the target is judged on wall "
                    "time; the last column pairs the same tokens' thread CPU time, a diagnostic that leaves out "
                    "time lost to other processes):", ""]  # fmt: skip
        out += [md_table(["model", "tokens/s (median)", "ms/token", "× base (median)", "min", "max",
                          "× base, CPU time (median)"], rows)]  # fmt: skip
        out += ["", f"Unmerged lorafam LoRA and PEFT LoRA (same tensors) gave the same tokens: "
                    f"{gen['lora_equals_peft_tokens']}."]  # fmt: skip
    s2 = d.get("s2")
    if s2:
        rows = [(n, s2[n]["timing"]["s2attn"]["median_s"], s2[n]["timing"]["full"]["median_s"],
                 s2[n]["s2 / full"]["median"]) for n in s2 if n.isdigit()]  # fmt: skip
        out += ["", f"S²-Attn (ratio {s2['group_size_ratio']}) vs SDPA, one layer's attention, {s2['heads']} heads / "
                    f"{s2['kv_heads']} kv heads × {s2['head_dim']}, forward + backward:", ""]  # fmt: skip
        out += [md_table(["tokens", "S²-Attn s", "full s", "paired ratio"], rows)]
    st = d.get("s2step")
    if st:
        rows = [(n, st[n]["timing"]["s2attn"]["median_s"], st[n]["timing"]["full"]["median_s"],
                 st[n]["s2 / full"]["median"], st[n]["s2 / full"].get("min"), st[n]["s2 / full"].get("max"))
                for n in s2step_lengths(st)]  # fmt: skip
        out += ["", f"Whole LongLoRA training step, S²-Attn vs full attention ({st['member']}; one model, the "
                    f"attention switched between steps, {st['threads']} threads, batch 1):", ""]  # fmt: skip
        out += [md_table(["tokens", "S²-Attn step s", "full step s", "paired ratio", "min", "max"], rows)]
    return out


def markdown(d: dict[str, Any]) -> str:
    rows = [(r["target"], r["limit"], r["measured"], f"**{r['status']}**", r["note"]) for r in d["summary"]]
    out = [
        "## Speed targets (issue 16): one interleaved run",
        "",
        f"`{d['command'].strip()}` → `benchmarks/results/speed.json` ({d['wall_s'] / 60:.1f} min). {d['model']}, "
        "r = 16, α = 32 on all 7 projections, AdamW, fp32. Every comparison is interleaved in one process (A B, "
        "B A, …); a ratio is the median of the per-round ratios, with the smallest and largest round in brackets.",
        "",
        _machine_line(d),
        "",
        *(
            [
                "Parts measured in an earlier run of the same command (its start time and arguments): "
                + "; ".join(_earlier(k, v) for k, v in d["parts_from_earlier_runs"].items())
                + ".",
                "",
            ]
            if d.get("parts_from_earlier_runs")
            else []
        ),
        md_table(["target", "limit", "measured", "status", "conditions / why"], rows),
    ]
    hosts = by_host()
    return "\n".join(out + ([hosts, ""] if hosts else []) + _detail_tables(d) + [""] + [d.get("notes", "")])


def _host(d: dict[str, Any]) -> str:
    m = d["machine"]
    flags = m["cpu_flags"]
    bf16 = (
        "AMX"
        if "amx_bf16" in flags
        else "AVX512-BF16, no AMX"
        if "avx512_bf16" in flags
        else "no bf16 instructions"
    )
    return f"{m['cpu']} ({bf16})"


def by_host(results: Path = RESULTS) -> str:
    """A table of every target on each kind of host: for each (CPU model, bf16 instruction set) the archived whole
    runs (``speed_session<N>_run<K>.json``, all parts measured in that run) of the latest session on it, each
    run's median ratio and how many of them met the limit. Rows are the targets of those runs' summaries."""
    runs: dict[str, dict[int, list[tuple[str, list[dict[str, Any]]]]]] = {}
    for path in sorted(results.glob("speed_session*_run*.json")):
        hit = re.fullmatch(r"speed_session(\d+)_run(\d+)\.json", path.name)
        d = json.loads(path.read_text())
        if not hit or d.get("parts_from_earlier_runs") or d.get("model") != "SmolLM2-135M-Instruct":
            continue
        runs.setdefault(_host(d), {}).setdefault(int(hit[1]), []).append((path.name, summary(d)))
    if not runs:
        return ""
    hosts = sorted(runs)
    latest = {h: runs[h][max(runs[h])] for h in hosts}
    targets = list(dict.fromkeys((r["target"], r["limit"]) for h in hosts for _, rs in latest[h] for r in rs))
    rows = []
    for target, limit in targets:
        cells = []
        for h in hosts:
            found = [r for _, rs in latest[h] for r in rs if (r["target"], r["limit"]) == (target, limit)]
            vals = [r for r in found if "value" in r]
            if not vals:
                seen = sorted(
                    {
                        r["measured"] if r["measured"] == r["status"] else f"{r['measured']} ({r['status']})"
                        for r in found
                    }
                )
                cells.append(", ".join(seen) if seen else "not in these runs")
                continue
            met = sum(r["status"] == "met" for r in vals)
            shown = ", ".join(f"{r['value']:.3f}" for r in vals)
            verdict = "diagnostic" if vals[0]["status"] == "diagnostic" else f"met {met}/{len(vals)}"
            cells.append(f"{shown} ({verdict})")
        rows.append((target, limit, *cells))
    head = [
        "### The targets on each host",
        "",
        "Every archived whole run of the latest session on each kind of host (files named in the column), "
        "recomputed from its JSON with this summary's rules; a cell lists each run's median paired ratio.",
        "",
    ]
    cols = [f"{h}: session {max(runs[h])}, " + ", ".join(f"`{n}`" for n, _ in latest[h]) for h in hosts]
    return "\n".join(head + [md_table(["target", "limit", *cols], rows)])


def _earlier(part: str, v: Any) -> str:
    if isinstance(v, dict):  # {"time_utc", "command"}; older files kept only the time
        return f"{part} ({v.get('time_utc')}, `{(v.get('command') or '').strip()}`)"
    return f"{part} ({v})"


def write_markdown(data: dict[str, Any]) -> None:
    update_markdown_section(SECTION, markdown(data))


if __name__ == "__main__":
    path = RESULTS / "speed.json"
    data = json.loads(path.read_text())
    data["summary"] = summary(data)
    write_json(path, data)
    write_markdown(data)
