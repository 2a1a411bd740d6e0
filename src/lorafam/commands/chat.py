"""``lorafam chat``: a terminal chat (chat template, streamed tokens), with or without an adapter.

Type a message and press Enter; ``/reset`` clears the history, ``/exit`` (or Ctrl-D) quits.
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  lorafam chat --adapter runs/lora --system "Answer briefly."
  lorafam chat --temperature 0.7 --top-k 50 --repetition-penalty 1.1"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lorafam.commands.generate import add_common

    add_common(p)


def run(args: argparse.Namespace, input_fn=input) -> int:  # input_fn: tests feed lines
    from rich.console import Console

    from lorafam.commands._generation import AdapterMismatchError, chat_prompt, load_for_inference, stream

    console = Console()
    try:
        model, tok = load_for_inference(args.model, args.adapter, args.ignore_base_mismatch, args.device)
    except (AdapterMismatchError, FileNotFoundError, ValueError, KeyError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    base = [{"role": "system", "content": args.system}] if args.system else []
    history = list(base)
    console.print("[dim]chat — /reset clears the history, /exit quits[/]")
    while True:
        try:
            line = input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = list(base)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        reply = stream(model, tok, chat_prompt(tok, history), args.max_new_tokens, args.temperature)
        history.append({"role": "assistant", "content": reply.strip()})
