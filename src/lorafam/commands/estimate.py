"""``lorafam estimate``: memory needed to train, before loading any weight.

Either a training YAML (``lorafam estimate my.yaml``) or a named architecture (``lorafam estimate --model
llama2-7b --quantization-bit 4 --batch 1 --seq 2048``). Prints each component and the total.
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  lorafam estimate examples/qlora.yaml
  lorafam estimate --model llama2-7b --quantization-bit 4 --batch 1 --seq 2048"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lorafam.train.estimate import PRESETS

    p.add_argument("config", nargs="?", default=None, help="training YAML (its model/batch/cutoff_len keys)")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides for the YAML")
    p.add_argument("--model", default=None, help=f"preset ({', '.join(PRESETS)}) or a folder with config.json")
    p.add_argument("--quantization-bit", type=int, choices=[4, 16, 32], default=None, help="base weight bits")
    p.add_argument("--bf16", action="store_true", help="bf16 activations and frozen weights")
    p.add_argument("--rank", type=int, default=8, help="adapter rank (default 8)")
    p.add_argument("--batch", type=int, default=1, help="micro-batch size (default 1)")
    p.add_argument("--seq", type=int, default=1024, help="sequence length (default 1024)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--device", default="cpu", help="cpu or cuda (runtime overhead differs)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from lorafam.train.config import ConfigError, load_config
    from lorafam.train.estimate import estimate_for_config, estimate_memory

    try:
        if args.config:
            cfg = load_config(args.config, args.overrides)
            est = estimate_for_config(cfg, device=args.device)
            title = f"{args.config}"
        else:
            q = 16 if args.quantization_bit == 16 else args.quantization_bit
            est = estimate_memory(
                args.model,
                quantization_bit=q,
                bf16=args.bf16 or q == 16,
                rank=args.rank,
                batch_size=args.batch,
                seq_len=args.seq,
                gradient_checkpointing=args.gradient_checkpointing,
                device=args.device,
            )
            title = f"{args.model or 'smollm2-135m'}, " + (
                f"{args.quantization_bit}-bit" if args.quantization_bit else ("bf16" if args.bf16 else "fp32")
            )
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    if args.json:
        print(json.dumps(est.as_dict(), indent=2))
        return 0
    table = Table(title=f"training memory estimate — {title}")
    table.add_column("component")
    table.add_column("GiB", justify="right")
    for key in ("weights", "adapter", "gradients", "optimizer", "activations", "logits", "runtime"):
        table.add_row(key, f"{getattr(est, key):.3f}")
    table.add_row("[bold]total", f"[bold]{est.total:.2f}")
    Console().print(table)
    Console().print(f"trainable params: {est.trainable_params:,} of {est.total_params:,}")
    return 0
