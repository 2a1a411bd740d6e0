"""``lorafam merge --adapter DIR --output DIR``: fold an adapter into its base, save a plain model folder.

The output is an ordinary transformers folder (``config.json``, ``model.safetensors``, tokenizer files) that
loads without lorafam. Members that cannot be merged (aLoRA) are refused with their reason; an NF4 base is
dequantised, never re-quantised. The folder is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  lorafam merge --adapter runs/lora --output runs/lora-merged
  lorafam merge --adapter runs/lora --output runs/lora-bf16 --dtype bfloat16 --force"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", required=True, help="adapter folder (PEFT layout)")
    p.add_argument("--output", required=True, help="where to write the merged model folder")
    p.add_argument("--model", default=None, help="base model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="saved dtype")
    p.add_argument(
        "--ignore-base-mismatch", action="store_true", help="merge an adapter recorded for another base"
    )
    p.add_argument("--force", action="store_true", help="replace --output if it already exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from rich.console import Console

    import lorafam as lf
    from lorafam.commands._generation import AdapterMismatchError, load_for_inference
    from lorafam.core.checkpoint import atomic_write_dir
    from lorafam.family import spec_for_config

    err = Console(stderr=True, soft_wrap=True)
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.force:
        err.print(f"[red]error:[/] --output {out} exists and is not empty; pass --force to replace it")
        return 1
    try:
        model, tok = load_for_inference(args.model, args.adapter, args.ignore_base_mismatch)
    except (AdapterMismatchError, FileNotFoundError, ValueError, KeyError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    for cfg in lf.configs(model).values():
        cls = spec_for_config(cfg).adapter_cls
        if not cls.mergeable:  # declared on Adapter
            reason = cls.not_mergeable_reason or "the method keeps the adapter separate"
            err.print(f"[red]error:[/] {args.adapter}: {type(cfg).__name__} cannot be merged: {reason}")
            return 1
    plain = lf.merge_and_unload(model).to(getattr(torch, args.dtype))

    def write(tmp: Path) -> None:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    atomic_write_dir(out, write)
    Console().print(f"merged {args.adapter} into the base → {out} (loads with transformers, no lorafam needed)")
    return 0
