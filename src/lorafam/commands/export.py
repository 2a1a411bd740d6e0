"""``lorafam export ADAPTER_DIR --to lora OUT_DIR`` / ``--to gguf OUT.gguf``: rewrite an adapter as plain PEFT LoRA
(see lorafam.export) or as a llama.cpp LoRA GGUF (lorafam.export_gguf).

Quantum-PEFT is exported exactly (rank K); DoRA / AdaLoRA by SVD to ``--rank`` (error reported); plain LoRA is
copied; aLoRA and mixtures are refused (no single ΔW). Prints a compatibility matrix for the source and the result.
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  lorafam export runs/dora --to lora runs/dora-as-lora --rank 16    PEFT / vLLM / llama.cpp
  lorafam export runs/lora --to gguf runs/lora.gguf                 llama.cpp --lora, Ollama ADAPTER"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", help="adapter folder (lorafam or PEFT layout)")
    p.add_argument(
        "--to",
        required=True,
        choices=["lora", "gguf"],
        help="lora: a plain PEFT LoRA folder; gguf: a llama.cpp LoRA adapter file (llama-cli --lora, Ollama ADAPTER)",
    )
    p.add_argument("out", help="where to write the exported adapter folder (--to lora) or .gguf file (--to gguf)")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16"], help="--to gguf: tensor type (default f32)")
    p.add_argument("--model", default=None, help="base model folder (default: the adapter's recorded base)")
    p.add_argument("--rank", type=int, default=None, help="SVD route only: LoRA rank (default: the member's rank)")
    p.add_argument("--name", default="default", help=argparse.SUPPRESS)


def load_base(name_or_path: str | None):  # -> nn.Module
    """The base a lorafam adapter records: a local folder, the embedded default, or a tiny test model."""
    import lorafam as lf

    tiny = {"tiny-llama": lf.tiny_llama, "tiny-gpt2": lf.tiny_gpt2}
    if name_or_path in tiny:
        return tiny[name_or_path]()
    return lf.load_model(name_or_path)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import lorafam as lf
    from lorafam.core.checkpoint import read_adapter_config
    from lorafam.export import export_lora, source_compatibility, svd_warning
    from lorafam.family import spec_for_config

    err, out = Console(stderr=True), Console()
    try:
        recorded = read_adapter_config(args.adapter).get("base_model_name_or_path")
        base = load_base(args.model or recorded)
        model = lf.load_adapter(base, args.adapter, name=args.name)
        cfg = lf.configs(model)[args.name]
        spec = spec_for_config(cfg)
        if args.to == "gguf":
            from lorafam.export_gguf import export_gguf

            g = export_gguf(model, args.out, name=args.name, rank=args.rank, dtype=args.dtype)
        else:
            report = export_lora(model, args.out, name=args.name, rank=args.rank)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        return 2
    done = g if args.to == "gguf" else report
    warning = svd_warning(spec.key, done.rank, done.max_rel_error)
    if warning:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if args.to == "gguf":
        print(
            f"{g.path}: llama.cpp LoRA adapter ({g.arch}, {g.tensors // 2} layers, rank {g.rank}, {g.route} route"
            + (f"; {g.notes[0]}" if g.notes else "")
            + "). Use: llama-cli -m BASE.gguf --lora "
            + g.path
        )
        return 0
    for title, rows in (
        (f"source: {args.adapter} ({spec.key})", source_compatibility(spec.key, spec.peft_compatible, spec.adapter_cls.mergeable)),
        (f"exported: {report.out_dir} (plain LoRA, r={report.rank}, α={report.alpha:g})", report.compatibility()),
    ):  # fmt: skip
        table = Table(title=title)
        for col in ("runtime", "loads it?", "note"):
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
    fidelity = "exact" if report.route != "svd" else f"SVD, max relative error {report.max_rel_error:.2e}"
    out.print(f"{report.layers} layers exported via the {report.route} route ({fidelity}).")
    return 0
