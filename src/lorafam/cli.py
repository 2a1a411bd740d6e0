"""The ``lorafam`` command line.

Each verb lives in its own module as ``add_arguments(parser)`` + ``run(args) -> int``; ``COMMANDS`` maps the verb
to ``"module"`` and its one-line help. A module may define ``EPILOG`` (examples shown under ``--help``). Adding a
verb = one module + one line here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "family": ("lorafam.commands.family", "list the family members with year, origin and idea"),
    "quickstart": ("lorafam.commands.quickstart", "train LoRA on the bundled dataset and show before/after"),
    "train": ("lorafam.commands.train", "train an adapter from a YAML config (key=value overrides after it)"),
    "preprocess": ("lorafam.commands.preprocess", "tokenise a config's dataset; --debug shows tokens and mask"),
    "generate": ("lorafam.commands.generate", "generate from a prompt with the base model and an adapter"),
    "chat": ("lorafam.commands.chat", "chat in the terminal (chat template, streaming) with an adapter"),
    "serve": (
        "lorafam.commands.serve",
        "serve the base and many adapters over an OpenAI/vLLM-compatible HTTP API",
    ),
    "merge": ("lorafam.commands.merge", "merge an adapter into its base and save a plain model folder"),
    "export": (
        "lorafam.commands.export",
        "rewrite an adapter as plain PEFT LoRA (exact for Quantum-PEFT, SVD otherwise)",
    ),
    "eval": (
        "lorafam.commands.eval",
        "evaluate an adapter (or the base) on a held-out file: generation + metrics",
    ),
    "estimate": ("lorafam.commands.estimate", "estimate training memory for a config before running it"),
    "env": ("lorafam.commands.env", "print versions, the device, and whether bf16 is fast here (for bug reports)"),
    "arena": ("lorafam.commands.arena", "train every member on the same tasks and budget; record the results"),
    "report": ("lorafam.commands.report", "write the LoRA family history article (zh + en) from arena results"),
}


EPILOG = """examples:
  lorafam quickstart                          train LoRA on the bundled data, show before/after
  lorafam train my.yaml learning_rate=5e-4    one YAML (LLaMA-Factory keys), key=value overrides
  lorafam eval --adapter runs/x --data test.jsonl      exact match, token F1, arena checkers
  lorafam export runs/x --to gguf runs/x.gguf         a llama.cpp / Ollama LoRA adapter
  lorafam env                                 versions and device, for a bug report

`lorafam COMMAND --help` shows each command's options and examples; docs/cli.md covers them all."""


def build_parser() -> argparse.ArgumentParser:
    from lorafam import __version__

    parser = argparse.ArgumentParser(
        prog="lorafam",
        description="The LoRA family, implemented and measured.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lorafam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(
            verb,
            help=help_text,
            description=help_text,
            epilog=getattr(mod, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(_module=module)
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from lorafam.core.allocator import tune_allocator

    tune_allocator()  # before any model is built: steps reuse their freed activations (docs/performance.md)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
