"""``lorafam train CONFIG.yaml [key=value ...]``: one YAML file, one command.

``--nproc N`` relaunches the same command under torchrun with N processes (DDP; gloo on CPU, NCCL on CUDA);
``torchrun --nproc_per_node N -m lorafam train CONFIG.yaml`` does the same by hand.
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  lorafam train examples/lora.yaml
  lorafam train examples/lora.yaml lora_rank=32 method_args.init=gaussian
  lorafam train examples/lora.yaml --nproc 2           DDP with torchrun (gloo on CPU)
  lorafam train examples/lora.yaml resume_from_checkpoint=true
  lorafam train my_llamafactory.yaml --print-config    resolved keys; notes for ignored foreign keys"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML file with LLaMA-Factory-style keys (see docs/trainer.md)")
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="key=value overrides, dotted for nesting (method_args.init_rank=12)",
    )
    p.add_argument("--nproc", type=int, default=None, help="launch N data-parallel processes with torchrun")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from lorafam.data.formats import DatasetError
    from lorafam.train.config import ConfigError, load_config

    err = Console(stderr=True, soft_wrap=True)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        err.print(f"[red]config error:[/] {exc}", highlight=False)
        return 2
    for note in cfg.notes:
        err.print(f"[dim]note:[/] {note}", highlight=False)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    if args.nproc and args.nproc > 1:
        from lorafam.train.distributed import launch

        return launch(args.nproc, ["train", args.config, *args.overrides])
    import os

    from lorafam.train.trainer import TrainingError, train

    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 prints
        err.print("[dim]resolved config:[/]")
        err.print(cfg.to_yaml(), highlight=False, markup=False)
    try:
        train(cfg)
    except (ConfigError, DatasetError, TrainingError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    return 0
