"""``lorafam preprocess CONFIG.yaml [--debug]``: tokenise the dataset exactly as ``train`` would.

Prints the counts (records per format, truncated, dropped, bad lines, train/val split). ``--debug`` prints the
first examples token by token: each token with its id, and whether it is trained (label = the token) or masked
(label -100) — the quickest way to check a chat template and ``train_on_prompt``.
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  lorafam preprocess examples/lora.yaml
  lorafam preprocess examples/lora.yaml --debug --examples 1   tokens with their labels"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="training YAML (its dataset/template/cutoff_len/... keys are used)")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides")
    p.add_argument("--debug", action="store_true", help="print examples token by token with their mask")
    p.add_argument("--examples", type=int, default=2, help="how many examples --debug prints (default 2)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    import lorafam as lf
    from lorafam.data.dataset import split
    from lorafam.data.encode import IGNORE_INDEX
    from lorafam.data.formats import DatasetError
    from lorafam.train.build import config_examples
    from lorafam.train.config import ConfigError, load_config

    console = Console()
    try:
        cfg = load_config(args.config, args.overrides)
        tok = lf.load_tokenizer(cfg.model_name_or_path)
        examples, stats = config_examples(cfg, tok)
    except (ConfigError, DatasetError, FileNotFoundError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    train_ex, val_ex = split(examples, cfg.val_size, cfg.seed)
    stats.train, stats.val = len(train_ex), len(val_ex)
    console.print(f"[bold]dataset[/]: {stats.summary()}", highlight=False)
    for path, lines in stats.bad_lines.items():
        console.print(f"  skipped bad lines in {path}: {lines[:20]}{' ...' if len(lines) > 20 else ''}")
    lengths = sorted(len(e.input_ids) for e in examples)
    targets = sum(e.n_target for e in examples)
    console.print(
        f"tokens per example: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}; "
        f"trained tokens {targets} of {sum(lengths)} ({100 * targets / max(1, sum(lengths)):.1f}%)"
    )
    if not args.debug:
        return 0
    for ex in examples[: args.examples]:
        console.rule(ex.source)
        text = Text()
        for tid, lab in zip(ex.input_ids, ex.labels):
            piece = tok.decode([tid])
            text.append(piece, style="bold green" if lab != IGNORE_INDEX else "dim")
        console.print("[dim]dim = masked (-100)[/], [bold green]green = trained[/]")
        console.print(text)
        table = Table(show_header=True, header_style="bold")
        for col in ("#", "token", "id", "label"):
            table.add_column(col)
        for i, (tid, lab) in enumerate(zip(ex.input_ids, ex.labels)):
            table.add_row(
                str(i), repr(tok.decode([tid])), str(tid), "-100 (masked)" if lab == IGNORE_INDEX else str(lab)
            )
        console.print(table)
    return 0
