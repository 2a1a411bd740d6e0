"""``lorafam report``: turn arena results into the lab report and the article (zh + en, Markdown + HTML)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  lorafam report --results arena-results"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="arena-results", help="arena results folder (default: arena-results)")
    p.add_argument("--budget", default=None, help="which budget's runs (default: the last arena's)")
    p.add_argument("--out", default=None, help="output folder (default: <results>/report)")
    p.add_argument("--bench", default="benchmarks/results", help="benchmark results folder reused for probes")
    p.add_argument(
        "--tone",
        default="lively",
        choices=("lively", "plain"),
        help="the article's voice: lively (the draft's storyteller flourishes) or plain (facts only)",
    )
    p.add_argument(
        "--inline-images",
        action="store_true",
        help="embed the article's figures in its HTML as data: URIs (default: numbered PNG files beside it)",
    )


def run(args: argparse.Namespace) -> int:
    from lorafam.report.build import build_report

    try:
        paths = build_report(args.results, args.out, args.budget, args.bench, args.tone, args.inline_images)
    except ValueError as exc:
        print(f"lorafam report: {exc}", file=sys.stderr)
        return 2
    for key in (
        "en.html",
        "zh.html",
        "en.md",
        "zh.md",
        *(f"article.{x}" for x in ("zh.html", "zh.md", "en.html", "en.md")),
        "data",
    ):
        print(f"{key:15s} {paths[key]}")
    return 0
