"""The ``train-step`` section of BENCHMARKS.md, built only from ``benchmarks/results/train_step.json``.

python -m benchmarks.train_step_report     # rewrite the section from the last results file
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.common import RESULTS, md_table, update_markdown_section

SECTION = "train-step"


def _ok(value: float | None, limit: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "not measured"
    met = value >= limit if higher_is_better else value <= limit
    return "**met**" if met else "**missed**"


def targets_table(s: dict[str, Any], loss_steps: int | None = None) -> str:
    g = s.get("gen_x_base", {})
    rows = [
        ("LoRA fp32 step ≤ 1.0× PEFT's", s.get("lora_fp32_step_vs_peft"), 1.0, False),
        ("LoRA peak RSS ≤ PEFT's", s.get("lora_rss_vs_peft"), 1.0, False),
        ("LoRA bf16-autocast step ≤ 0.5× PEFT fp32 step", s.get("lora_bf16_step_vs_peft_fp32"), 0.5, False),
        (f"bf16 loss after {loss_steps or 20} steps within 2% of fp32", s.get("bf16_loss_rel_diff"), 0.02, False),
        ("DoRA step ≤ 1.10× our LoRA step", s.get("dora_step_vs_our_lora"), 1.10, False),
        ("DoRA peak RSS ≤ 1.1× our LoRA's", s.get("dora_rss_vs_our_lora"), 1.10, False),
        ("unmerged LoRA generation ≥ 0.9× base tokens/s", g.get("lorafam lora unmerged"), 0.9, True),
        ("unmerged DoRA generation ≥ 0.9× base tokens/s", g.get("lorafam dora unmerged"), 0.9, True),
    ]
    body = [
        (name, "—" if v is None else f"{v:.3f}", f"{'≥' if hib else '≤'} {lim}", _ok(v, lim, hib))
        for name, v, lim, hib in rows
    ]
    return md_table(["target", "measured (ratio)", "limit", "status"], body)


def markdown(d: dict[str, Any]) -> str:
    m, st, s = d["machine"], d["setup"], d["summary"]
    out = [
        "## Train step, memory and generation: LoRA and DoRA vs PEFT",
        "",
        f"`flock /tmp/lorafam-bench.lock {d['command'].strip()}` → `benchmarks/results/train_step.json` "
        f"(run {m['time_utc']}, git {m['git']['commit'][:10]}{' dirty' if m['git']['dirty'] else ''}).",
        "",
        f"{st['model']}, batch {st['batch']} × seq {st['seq']}, all 7 projections, r = {st['rank']}, "
        f"α = {st['alpha']:g}; {st['optimizer']}. Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs, "
        f"flags: {', '.join(m['cpu_flags']) or 'none of interest'}, torch capability {m['torch_cpu_capability']}, "
        f"oneDNN bf16: {m['onednn_bf16_supported']}), {m['torch_threads']} torch threads; torch "
        f"{m['versions']['torch']}, transformers {m['versions']['transformers']}, peft {m['versions']['peft']}. "
        "The machine is shared with other jobs: absolute times drift, ratios come from interleaved rounds.",
        "",
        "### Targets (all ratios from this one run)",
        "",
        targets_table(s, d.get("loss", {}).get("steps")),
    ]
    t = d.get("time")
    if t:
        rss = d.get("rss", {})
        ref_fp32 = (t["matmul_gflops_before"]["fp32"] + t["matmul_gflops_after"]["fp32"]) / 2
        ref_bf16 = (t["matmul_gflops_before"]["bf16"] + t["matmul_gflops_after"]["bf16"]) / 2
        gf = s.get("achieved_gflops", {})
        peft_lora = t["fp32"]["peft lora fp32"]["median_s"]
        rows = []
        for group in ("fp32", "bf16"):
            for k, v in t.get(group, {}).items():
                if group == "bf16" and k == "peft lora fp32":
                    k_label = f"{k} (bf16 group)"
                    rows.append((k_label, v["median_s"], v["iqr_s"], 1.0, "—", "—"))
                    continue
                ref = t[group].get("peft lora fp32", {}).get("median_s", peft_lora)
                r = rss.get(k, {}).get("peak_rss_mib")
                rows.append(
                    (k, v["median_s"], v["iqr_s"], v["median_s"] / ref, gf.get(k, "—"), "—" if r is None else r)
                )
        out += [
            "",
            f"### Train step (forward + backward + AdamW), {st['repeats']} interleaved rounds (bf16 group: "
            f"{st['bf16_repeats']})",
            "",
            md_table(
                ["configuration", "median s", "IQR s", "× PEFT LoRA fp32", "achieved GFLOP/s", "peak RSS MiB"],
                rows,
            ),
            "",
            f"Machine matmul reference (F.linear 1024×576 · 576×1536, measured in the same run): fp32 "
            f"{ref_fp32:.1f} GFLOP/s, bf16 {ref_bf16:.1f} GFLOP/s. FLOPs per step counted by torch's flop "
            f"counter: LoRA {t['flops_per_step']['lorafam lora fp32'] / 1e9:.0f} GFLOP, DoRA "
            f"{t['flops_per_step']['lorafam dora fp32'] / 1e9:.0f} GFLOP. "
            'bf16 = `torch.autocast("cpu", torch.bfloat16)`; lorafam additionally stores the frozen base in bf16 '
            "(`lf.cast_frozen`), PEFT keeps fp32 weights (re-cast every step).",
        ]
        if rss:
            base_rss = rss.get("base model loaded", {}).get("peak_rss_mib")
            out += [
                "",
                f"Peak RSS: each configuration in its own process (train steps: {d['setup'].get('rss_steps')}); "
                f"loading the frozen model alone peaks at {base_rss:.0f} MiB."
                if base_rss
                else "",
            ]
    g = d.get("gen")
    if g:
        rows = [(k, v["tokens_per_s"], v["x_base"], v["median_s"]) for k, v in g["results"].items()]
        out += [
            "",
            f"### Generation: {g['new_tokens']} greedy tokens, fp32, `use_cache=True`, prompt {g['prompt_tokens']} "
            "tokens, batch 1",
            "",
            md_table(["model", "tokens/s", "× base", "median s"], rows),
            "",
            "Every adapter has non-zero (perturbed) B, and PEFT's models carry the very same adapter tensors as "
            f"ours. Same {g['new_tokens']} tokens — merged vs unmerged LoRA: {g['merged_equals_unmerged_tokens']}; lorafam vs "
            f"PEFT: {g['lorafam_equals_peft_tokens']}.",
        ]
    lo = d.get("loss")
    if lo:
        out += [
            "",
            f"### bf16 vs fp32 loss: lorafam LoRA, same init, same text batches (batch {lo['batch']} × seq "
            f"{lo['seq']}, lr {lo['lr']:g}, {lo['steps']} steps)",
            "",
            md_table(
                ["precision", "loss at step 1", f"loss at step {lo['steps']}"],
                [(k, v[0], v[-1]) for k, v in lo["curves"].items()],
            ),
            "",
            f"Relative difference after {lo['steps']} steps: {100 * lo['rel_diff']:.2f}%.",
        ]
    notes = d.get("notes")
    if notes:
        out += ["", "### Notes", "", notes]
    return "\n".join(out)


def write_markdown(data: dict[str, Any]) -> None:
    update_markdown_section(SECTION, markdown(data))


if __name__ == "__main__":
    write_markdown(json.loads((RESULTS / "train_step.json").read_text()))
