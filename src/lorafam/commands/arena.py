"""``lorafam arena``: train every family member on the same tasks with the same budget, and record it all."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  lorafam arena --budget quick --dry-run        the plan and its estimated time
  lorafam arena --budget quick --members lora,dora --tasks add3"""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", default="quick", help="quick | standard | full (default: quick)")
    p.add_argument(
        "--members", type=_csv, default=None, help="comma-separated members (default: all in the registry)"
    )
    p.add_argument("--tasks", type=_csv, default=None, help="comma-separated tasks (default: the budget's)")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], default=None, help="e.g. 0,1")
    p.add_argument("--spec", default=None, help="YAML overlaid on the default arena spec (user tasks, overrides)")
    p.add_argument("--results", default="arena-results", help="results folder (default: arena-results)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda; the same code either way")
    p.add_argument("--no-peers", action="store_true", help="skip PEFT peers, full fine-tuning and the base run")
    p.add_argument("--timeout", type=float, default=None, help="seconds after which one run is killed (failed)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and its estimated time (from timings measured here), then exit",
    )


def run(args: argparse.Namespace) -> int:
    from lorafam.arena.runner import run_arena
    from lorafam.arena.spec import load_spec, plan

    try:
        spec = load_spec(args.spec)
        experiments = plan(spec, args.budget, args.members, args.tasks, args.seeds, peers=not args.no_peers)
    except ValueError as exc:
        print(f"lorafam arena: {exc}", file=sys.stderr)
        return 2
    from lorafam.arena.eta import summarize
    from lorafam.arena.pool import worker_count

    workers = worker_count(experiments[0].settings, args.device) if experiments else 1
    eta = summarize(experiments, args.results, workers)
    if args.dry_run:
        for e in experiments:
            print(e.run_id)
        print(f"{len(experiments)} runs, budget {args.budget}; {eta['text']}")
        return 0
    print(f"lorafam arena: {len(experiments)} runs, budget {args.budget}; {eta['text']}", file=sys.stderr)
    outcome = run_arena(experiments, args.results, device=args.device, timeout_s=args.timeout)
    print(
        f"arena {args.budget}: {len(outcome.ran)} ran, {len(outcome.skipped)} already done, "
        f"{len(outcome.failed)} failed, {len(outcome.kept_apart)} kept apart (other version/machine); "
        f"{outcome.seconds:.0f} s. Results: {outcome.folder}"
    )
    return 0
