"""The BENCHMARKS.md section of ``python -m benchmarks.serve`` (from its results JSON), and the try-it page's
screenshot for docs/serve.md."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

import lorafam as lf
from benchmarks.common import md_table
from lorafam.serve.batching import Engine

PARTS = ("mixed", "sweep", "merge", "alora")


def _spread(v: list[float]) -> str:
    return f"{v[0]:.2f}–{v[1]:.2f}"


def markdown(res: dict[str, Any]) -> str:
    """The whole ``serve`` section: how it was run, then one block per measured part."""
    lines = _intro(res)
    missing = [p for p in PARTS if p not in res]
    if missing:
        lines += [f"Not measured in this run: {', '.join(missing)}.", ""]
    blocks = {"mixed": _mixed, "sweep": _sweep, "merge": _merge, "alora": _alora}
    for part in PARTS:
        if part in res:
            lines += blocks[part](res) + [""]
    return "\n".join(lines)


def _intro(res: dict[str, Any]) -> list[str]:
    m, a = res["machine"], res["args"]
    amx = "AMX" if any(f.startswith("amx") for f in m.get("cpu_flags", [])) else "no AMX"
    flags = ", ".join(m.get("cpu_flags", [])) or "?"
    lines = [
        "## Serving many adapters (`lorafam serve`'s engine)",
        "",
        f"`python -m benchmarks.serve` (one run, {res.get('started', '?')} – {res.get('ended', '?')} UTC, "
        f"{res.get('wall_s', 0) / 60:.1f} min) on {m.get('cpu', '?')} ({flags}; {amx}), "
        f"{m.get('logical_cpus', '?')} logical CPUs shared with other jobs running at nice 19, torch threads "
        f"{m.get('threads', '?')}, load average {res['load_avg']} at the start and {res.get('load_avg_end', '?')} at "
        f"the end. SmolLM2-135M-Instruct fp32, random (non-identity) adapters, prompts of {a['in_len']} tokens, "
        f"{a['out_len']} generated tokens per request (EOS ignored). Contenders run interleaved (each round runs "
        "all of them, the order reversed every other round, after one warm-up round); a ratio is the median of the "
        "per-round paired ratios, with the lowest and highest round in brackets. Workload knobs as in S-LoRA "
        "(arXiv 2311.03285).",
        "",
    ]
    if res.get("note"):
        lines += [f"*{res['note']}*", ""]
    return lines


def _mixed(res: dict[str, Any]) -> list[str]:
    x = res["mixed"]
    t, peft = x["tokens_per_s"], x["peft"]
    rows = [
        [
            "8 different adapters (ours)",
            t["mixed_8_adapters"],
            f"**{x['ratio_mixed_over_one']:.2f}** ({_spread(x['ratio_spread'])}); target ≥ 0.8",
        ],
        [
            "8 different adapters (ours, previous concatenated kernel)",
            t["mixed_8_concat"],
            f"{x['ratio_concat_over_one']:.2f}; grouped / concatenated {x['ratio_grouped_over_concat']:.2f} "
            f"({_spread(x['ratio_grouped_over_concat_spread'])})",
        ],
        ["one adapter (ours, unmerged)", t["one_adapter"], "1"],
        ["base model (ours)", t["base"], f"one adapter / base {x['ratio_one_over_base']:.2f}"],
        [
            "8 LoRA adapters (PEFT `adapter_names`)",
            peft["tokens_per_s"]["peft_mixed_8"],
            f"{peft['ratio_mixed_over_one']:.2f}"
            + (f" ({_spread(peft['ratio_spread'])})" if "ratio_spread" in peft else ""),
        ],
        ["one adapter (PEFT)", peft["tokens_per_s"]["peft_one"], "1"],
    ]
    return [
        f"**Mixed batch.** {x['rows']} rows, each on a different adapter (LoRA r=8/16/32, rsLoRA r=16, DoRA r=16, "
        "AdaLoRA r=12, Quantum-PEFT K=16, aLoRA r=16; all linear layers) vs the same rows on one LoRA r=16. Ours "
        "groups the rows by adapter (each row at its own rank); the previous kernel (all factors concatenated, "
        "masked per row) runs in the same rounds. Decode tokens/s "
        f"over the steps where all rows ran, {len(x['raw_tokens_per_s']['one_adapter'])} "
        "rounds. PEFT's rows are `generate()` tokens/s (prefill included; it refuses DoRA with `adapter_names`, so "
        "its mix is 8 LoRA adapters of the same ranks):",
        "",
        md_table(["batch of 8", "tokens/s (median)", "ratio to one adapter"], rows),
    ]


def _sweep(res: dict[str, Any]) -> list[str]:
    run = res.get("sweep_run")  # the sweep measured in a hold of its own (``--parts sweep``), merged in
    a = run["args"] if run else res["args"]
    when = (
        f"Measured in a second hold ({run['started']}–{run['ended']} UTC, load average {run['load_avg']} → "
        f"{run['load_avg_end']}; same machine and settings). "
        if run
        else ""
    )
    rows = [
        [
            n,
            v["adapters_used"],
            v["ours_tokens_per_s"],
            v["peft_per_adapter_tokens_per_s"],
            f"**{v['ratio_ours_over_peft']:.2f}** ({_spread(v['ratio_spread'])})",
            v["ours_median_ttft_s"],
        ]
        for n, v in res["sweep"].items()
    ]
    return [
        f"**Many adapters.** {when}{a['requests']} requests, popularity ∝ (i+1)^−{a['alpha']}, rate {a['rate']} req/s "
        f"(inf: all at once), ranks {a['ranks']} cycled, on q,k,v,o; {a['sweep_repeats']} rounds. Ours: continuous "
        "batching, ≤ 32 rows of any adapters per decode step. PEFT per adapter: the oldest waiting request's adapter "
        "is set, and all its waiting requests (≤ 32) run in one `generate`. Tokens/s over the whole run:",
        "",
        md_table(
            ["adapters", "used", "ours tok/s", "PEFT per-adapter tok/s", "ours / PEFT", "ours median TTFT (s)"],
            rows,
        ),
    ]


def _merge(res: dict[str, Any]) -> list[str]:
    x = res["merge"]
    t = x["tokens_per_s"]
    return [
        f"**One hot adapter.** 8 rows of one LoRA r=16 (all linear layers): unmerged {t['unmerged']:.1f} tok/s, "
        f"merged {t['merged']:.1f} tok/s; unmerged / merged = **{x['ratio_unmerged_over_merged']:.2f}** "
        f"({_spread(x['ratio_spread'])}). The engine merges when all traffic is one mergeable adapter and swaps the "
        "original weights back (exact) when another is asked for.",
    ]


def _alora(res: dict[str, Any]) -> list[str]:
    rows = [
        [
            n,
            v["ttft_s"]["reuse"] * 1000,
            v["ttft_s"]["no_reuse"] * 1000,
            f"**{v['speedup']:.1f}×**" + (f" ({_spread(v['speedup_spread'])})" if "speedup_spread" in v else ""),
        ]
        for n, v in res["alora"].items()
    ]
    return [
        "**aLoRA after a base turn.** Time to first token of an aLoRA call (rank 32, all linear layers) on the "
        "history the base model just produced, reusing the base's K/V from the engine's shared prefix cache vs "
        "computing the whole prompt (`use_prefix_cache=False`):",
        "",
        md_table(["history tokens", "TTFT with reuse (ms)", "TTFT without (ms)", "without / with"], rows),
    ]


def screenshot(path: Path) -> None:
    """The try-it page on SmolLM2 (a lightly perturbed LoRA beside the base), captured in headless Chromium."""
    import shutil

    from playwright.sync_api import sync_playwright

    from lorafam.serve.app import ServerThread, create_app
    from lorafam.serve.metrics import Metrics

    root = Path(tempfile.mkdtemp())
    model, tok = lf.load_model(), lf.load_tokenizer()
    lf.attach(model, lf.LoraConfig(rank=16, alpha=32, targets="all-linear"), name="x")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p, _, _ in lf.core.inject.named_adapter_params(model):
            p.add_(torch.randn(p.shape, generator=g) * 0.004)
    lf.save_adapter(model, root / "tutor-lora", name="x")
    lf.detach(model, "x")
    engine = Engine(model, tok, base_id="SmolLM2-135M-Instruct", metrics=Metrics())
    engine.load("tutor-lora", root / "tutor-lora")
    engine.start()
    server = ServerThread(create_app(engine)).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 640})
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelectorAll('#model-a option').length >= 2")
            page.select_option("#model-a", "tutor-lora")
            page.check("#side")
            page.select_option("#model-b", "SmolLM2-135M-Instruct")
            page.fill("#max-tokens", "40")
            for turn, text in enumerate(["What is the capital of France?", "And of Italy?"], start=1):
                page.fill("#input", text)
                page.click("#send")
                page.wait_for_function(
                    f"document.querySelectorAll('.stats[data-tokens]').length == {2 * turn}", timeout=600_000
                )
            page.screenshot(path=str(path))
            browser.close()
    finally:
        server.stop()
        engine.close()
    print(f"wrote {path}")
