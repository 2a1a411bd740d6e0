"""``lorafam quickstart``: teach the default model a new skill with LoRA in a few minutes on a CPU.

Trains LoRA (r=16, all linear layers) on the bundled word-reversal dataset with the regular trainer, then
greedy-decodes held-out items with the base model and with the adapter and prints both side by side, with the
exact-match rate of each.
"""

from __future__ import annotations

import argparse
import json

EPILOG = """examples:
  lorafam quickstart                     30 steps of LoRA, then base vs adapter on 20 held-out items
  lorafam quickstart --method dora --steps 60"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    p.add_argument("--method", default="lora", help="family member to train (default lora)")
    p.add_argument("--output-dir", default="runs/quickstart", help="run folder (replaced if it exists)")
    p.add_argument("--eval-items", type=int, default=20, help="held-out items to decode before/after")
    p.add_argument("--show", type=int, default=6, help="items to print side by side")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import lorafam as lf
    from lorafam.commands._generation import chat_prompt, generate_batch
    from lorafam.data.dataset import bundled_path
    from lorafam.train.config import make_config
    from lorafam.train.trainer import native_bf16, train

    console = Console()
    cfg = make_config(
        {
            "method": args.method,
            "dataset": "bundled:reverse_words",
            "lora_rank": 16,
            "lora_alpha": 32,
            "lora_target": "all",
            "learning_rate": 1e-3,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 4,
            "per_device_train_batch_size": 8,
            "max_steps": args.steps,
            "cutoff_len": 128,
            "logging_steps": 5,
            "save_steps": 0,
            "bf16": native_bf16(),
            "output_dir": args.output_dir,
            "overwrite_output_dir": True,
            "seed": 0,
        },
        source="quickstart",
    )
    console.rule("[bold]lorafam quickstart: LoRA teaches SmolLM2-135M to reverse word lists")
    result = train(cfg)
    import gc

    gc.collect()  # the training model is gone; free it before loading the base again

    rows = [json.loads(line) for line in bundled_path("reverse_words_test").read_text().splitlines()]
    rows = rows[: args.eval_items]
    tok = lf.load_tokenizer()
    prompts = [chat_prompt(tok, [{"role": "user", "content": f"{r['instruction']}\n{r['input']}"}]) for r in rows]
    model = lf.load_model()
    before = generate_batch(model, tok, prompts, max_new_tokens=32)
    lf.load_adapter(model, result.adapter_dir)
    after = generate_batch(model, tok, prompts, max_new_tokens=32)
    em_before = sum(b == r["output"] for b, r in zip(before, rows)) / len(rows)
    em_after = sum(a == r["output"] for a, r in zip(after, rows)) / len(rows)

    table = Table(title=f"held-out items (greedy decoding), first {min(args.show, len(rows))} of {len(rows)}")
    for col in ("input", "expected", "base model", "with LoRA adapter"):
        table.add_column(col, overflow="fold")
    for r, b, a in list(zip(rows, before, after))[: args.show]:
        table.add_row(r["input"], r["output"], b, a)
    console.print(table)
    console.print(
        f"exact match on {len(rows)} held-out items: base {em_before:.0%} → with adapter {em_after:.0%}   "
        f"({result.steps} steps, {result.seconds_per_step:.2f} s/step, adapter in {result.adapter_dir})"
    )
    return 0
