"""``lorafam family``: the members, oldest first."""

from __future__ import annotations

import argparse
import json

EPILOG = """examples:
  lorafam family"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the registry as JSON")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from lorafam.family import family

    members = family()
    if args.json:
        rows = [
            {k: getattr(m, k) for k in ("name", "year", "origin", "venue", "arxiv", "idea", "parent", "in_peft")}
            for m in members
        ]
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="The LoRA family")
    for col in ("member", "year", "origin", "venue", "parent", "idea"):
        table.add_column(col, overflow="fold")
    for m in members:
        table.add_row(m.name, str(m.year), m.origin, m.venue, m.parent or "—", m.idea)
    Console().print(table)
    return 0
