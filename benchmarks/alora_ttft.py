"""aLoRA time to first token after a cached history: base-cache reuse vs re-prefill, vs PEFT's recipe, vs LoRA.

    flock /tmp/lorafam-bench.lock python -m benchmarks.alora_ttft            # SmolLM2, 512/1024/2048, 1 and 2 threads
    python -m benchmarks.alora_ttft --smoke                                  # tiny random Llama, seconds

Setting: SmolLM2-135M-Instruct (fp32), one aLoRA adapter (r=32, all linear layers, invoked by ChatML's
``<|im_start|>assistant\\n``, 4 tokens) and one plain LoRA adapter of the same shape on the same model. The history is
a chat transcript cut to N tokens; the call is history + invocation, one new token (TTFT = the whole call).

Contenders, timed interleaved in one process (medians; see benchmarks/common.py):

- ``reuse``        lf.generate(..., adapter="alora", cache=PrefixCache(history)) — our engine, history reused.
- ``base_decode``  one base-model decode step at the same history length (one token, plain forward on a cache
                   view: the per-token cost of ordinary generation) — the yardstick of the first target.
- ``peft_reuse``   PEFT's documented recipe: base prefill with the adapter disabled once, then per call
                   ``generate(full, past_key_values=copy.deepcopy(cache), max_new_tokens=1)``.
- ``reprefill`` / ``peft_reprefill``  the same aLoRA call with no cache (ours / PEFT's generate).
- ``lora``         an ordinary LoRA adapter on the same model: it changes every token's K/V, so it cannot reuse
                   the base cache and re-prefills (our engine decides this; reused_tokens = 0).

Targets (issue 5): reuse ≤ 2× base_decode and reuse ≤ 0.3× peft_reuse at every length. Outputs must match the
no-cache path (first token equal; first-token logits compared). Results: benchmarks/results/alora_ttft.json and
the ``alora-ttft`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import lorafam as lf
from benchmarks.common import RESULTS, interleaved, machine_info, md_table, update_markdown_section, write_json

INVOCATION = "<|im_start|>assistant\n"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _history_ids(tok: Any, n: int) -> torch.Tensor:
    """A chat transcript (our own filler text) tokenised and repeated/cut to exactly ``n`` tokens."""
    messages = []
    for i in range(12):
        messages.append({"role": "user", "content": f"Turn {i}: summarise why the sky looks blue at noon."})
        messages.append(
            {
                "role": "assistant",
                "content": f"Reply {i}: sunlight scatters off air molecules, and short blue "
                "wavelengths scatter the most, so the whole sky glows blue while the sun itself looks white.",
            }
        )
    ids = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False).input_ids
    reps = n // len(ids) + 1
    return torch.tensor([(ids * reps)[:n]])


def _perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p, role, _ in lf.core.inject.named_adapter_params(model):
            if role == "b":
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)


def _setup(smoke: bool, rank: int) -> dict[str, Any]:
    import peft

    if smoke:
        model, peft_base, tok = lf.tiny_llama(), lf.tiny_llama(), None
        inv = [7, 9, 11, 13]
    else:
        tok = lf.load_tokenizer()
        model, peft_base = lf.load_model(), lf.load_model()
        inv = lf.ALoraConfig.from_string(INVOCATION, tok).invocation_tokens
    lf.attach(model, lf.ALoraConfig(rank=rank, alpha=rank, targets=TARGETS, invocation_tokens=inv), name="alora")
    lf.attach(model, lf.LoraConfig(rank=rank, alpha=rank, targets=TARGETS), name="lora")
    _perturb(model, seed=0)
    model.eval()
    tmp = Path(tempfile.mkdtemp(prefix="alora-bench-"))
    lf.save_adapter(model, tmp / "alora", name="alora")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(peft_base, tmp / "alora").eval()
    return {"model": model, "pm": pm, "tok": tok, "inv": inv}


def _history(env: dict[str, Any], n: int) -> torch.Tensor:
    if env["tok"] is None:
        return torch.randint(20, 256, (1, n), generator=torch.Generator().manual_seed(n))
    return _history_ids(env["tok"], n)


@torch.no_grad()
def measure(env: dict[str, Any], n: int, repeats: int, slow_repeats: int) -> dict[str, Any]:
    from transformers import DynamicCache

    model, pm, inv = env["model"], env["pm"], env["inv"]
    hist = _history(env, n)
    full = torch.cat([hist, torch.tensor([inv])], dim=1)
    ones = torch.ones_like(full)

    t = time.perf_counter()
    pc = lf.PrefixCache(model, hist)
    ours_prefill_s = time.perf_counter() - t
    with pm.disable_adapter():
        kv = pm(input_ids=hist, cache=DynamicCache(), use_cache=True).cache
    nxt = full[:, n : n + 1]

    def base_decode() -> None:
        with lf.disabled(model):
            model(input_ids=nxt, cache=pc.view(), use_cache=True, logits_to_keep=1)

    def peft_reuse() -> Any:
        return pm.generate(
            input_ids=full,
            attention_mask=ones,
            past_key_values=copy.deepcopy(kv),
            max_new_tokens=1,
            do_sample=False,
        )

    fast = interleaved(
        {
            "reuse": lambda: lf.generate(model, None, full, "alora", pc, 1),
            "base_decode": base_decode,
            "peft_reuse": peft_reuse,
        },
        repeats=repeats,
        log=None,
    )
    slow = interleaved(
        {
            "reprefill": lambda: lf.generate(model, None, full, "alora", None, 1),
            "lora": lambda: lf.generate(model, None, full, "lora", pc, 1),
            "peft_reprefill": lambda: pm.generate(
                input_ids=full, attention_mask=ones, max_new_tokens=1, do_sample=False
            ),
        },
        repeats=slow_repeats,
        warmup=0,
        log=None,
    )
    # outputs: the reuse path against the no-cache path (ours and PEFT's)
    r = lf.generate(model, None, full, "alora", pc, 1)
    f = lf.generate(model, None, full, "alora", None, 1)
    lo = lf.generate(model, None, full, "lora", pc, 1)
    peft_tok = int(peft_reuse()[0, -1])
    med = {k: v["median_s"] for k, v in {**fast, **slow}.items()}
    return {
        "history_tokens": n,
        "invocation_tokens": len(inv),
        "median_ms": {k: 1000 * v for k, v in med.items()},
        "timings": {**fast, **slow},
        "ours_base_prefill_once_ms": 1000 * ours_prefill_s,
        "reused_tokens": {"alora": r.reused_tokens, "lora": lo.reused_tokens},
        "outputs": {
            "first_token_reuse": r.new_ids[0],
            "first_token_no_cache": f.new_ids[0],
            "first_token_peft_reuse": peft_tok,
            "max_abs_logit_diff_reuse_vs_no_cache": float((r.first_logits - f.first_logits).abs().max()),
            "identical_tokens": r.new_ids[0] == f.new_ids[0] == peft_tok,
        },
        "ratios": {
            "reuse_over_base_decode": med["reuse"] / med["base_decode"],
            "reuse_over_peft_reuse": med["reuse"] / med["peft_reuse"],
            "reprefill_over_reuse": med["reprefill"] / med["reuse"],
            "lora_over_reuse": med["lora"] / med["reuse"],
            "peft_reprefill_over_peft_reuse": med["peft_reprefill"] / med["peft_reuse"],
        },
        "targets_met": {
            "reuse_le_2x_base_decode": med["reuse"] <= 2 * med["base_decode"],
            "reuse_le_0.3x_peft_reuse": med["reuse"] <= 0.3 * med["peft_reuse"],
        },
    }


def _markdown(data: dict[str, Any]) -> str:
    rows = []
    for row in data["rows"]:
        m, r = row["median_ms"], row["ratios"]
        rows.append(
            [
                row["threads"],
                row["history_tokens"],
                f"{m['reuse']:.0f}",
                f"{m['base_decode']:.0f}",
                f"{r['reuse_over_base_decode']:.2f}",
                f"{m['peft_reuse']:.0f}",
                f"{r['reuse_over_peft_reuse']:.2f}",
                f"{m['reprefill']:.0f}",
                f"{m['peft_reprefill']:.0f}",
                f"{m['lora']:.0f}",
                "yes" if row["outputs"]["identical_tokens"] else "NO",
            ]
        )
    mi = data["machine"]
    head = (
        f"`flock /tmp/lorafam-bench.lock python -m benchmarks.alora_ttft` — {data['model']}, fp32, aLoRA and LoRA "
        f"r={data['rank']} on all linear layers, a {data['rows'][0]['invocation_tokens']}-token invocation "
        f"(`<|im_start|>assistant\\n`) after an N-token chat history, one new token. Medians of "
        f"{data['repeats']} interleaved rounds ({data['slow_repeats']} for the re-prefill columns); CPU: "
        f"{mi['cpu']}. Results: `benchmarks/results/alora_ttft.json`.\n\n"
    )
    table = md_table(
        [
            "threads",
            "history",
            "reuse ms",
            "base 1-token decode ms",
            "reuse / decode (≤ 2)",
            "PEFT reuse ms",
            "reuse / PEFT (≤ 0.3)",
            "re-prefill ms",
            "PEFT re-prefill ms",
            "LoRA ms",
            "same token",
        ],
        rows,
    )
    met = {k: all(r["targets_met"][k] for r in data["rows"]) for k in data["rows"][0]["targets_met"]}
    peft_floor = [r["median_ms"]["base_decode"] / r["median_ms"]["peft_reuse"] for r in data["rows"]]
    tail = (
        f"\n\nTargets: reuse ≤ 2× decode {'met' if met['reuse_le_2x_base_decode'] else 'MISSED'} at every row; "
        f"reuse ≤ 0.3× PEFT {'met' if met['reuse_le_0.3x_peft_reuse'] else 'MISSED'}. A call costing exactly "
        f"one decode step would be {min(peft_floor):.2f}–{max(peft_floor):.2f}× PEFT's reuse time here "
        "(analysis and profile: docs/alora.md)."
    )
    return "## aLoRA time to first token (base-cache reuse)\n\n" + head + table + tail + "\n"


def rewrite_markdown(path: Path = RESULTS / "alora_ttft.json") -> None:
    """Regenerate the BENCHMARKS.md section from a results file (no measuring)."""
    import json

    update_markdown_section("alora-ttft", _markdown(json.loads(path.read_text())))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--slow-repeats", type=int, default=2)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--smoke", action="store_true", help="tiny random Llama, short histories; writes nothing")
    p.add_argument("--out", type=Path, default=RESULTS / "alora_ttft.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.lengths, args.repeats, args.slow_repeats = [64, 128], 2, 1
    warnings.filterwarnings("ignore", category=FutureWarning)  # PEFT's recipe passes `past_key_values`
    env = _setup(args.smoke, args.rank)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n in args.lengths:
            row = {"threads": threads, **measure(env, n, args.repeats, args.slow_repeats)}
            rows.append(row)
            m = row["median_ms"]
            print(
                f"threads={threads} N={n}: reuse {m['reuse']:.1f} ms, decode {m['base_decode']:.1f} ms, "
                f"PEFT reuse {m['peft_reuse']:.1f} ms, re-prefill {m['reprefill']:.0f} ms, LoRA {m['lora']:.0f} ms, "
                f"targets {row['targets_met']}, outputs {row['outputs']}",
                flush=True,
            )
    data = {
        "benchmark": "alora_ttft",
        "model": "tiny-llama (smoke)" if args.smoke else "SmolLM2-135M-Instruct",
        "rank": args.rank,
        "repeats": args.repeats,
        "slow_repeats": args.slow_repeats,
        "machine": machine_info(),
        "rows": rows,
    }
    if not args.smoke:
        write_json(args.out, data)
        update_markdown_section("alora-ttft", _markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
