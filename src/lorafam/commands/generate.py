"""``lorafam generate``: complete a prompt with the base model, with or without an adapter.

The prompt goes through the tokenizer's chat template as a user message (``--raw`` sends it as-is); tokens are
streamed to the terminal. An adapter trained on another base is refused (``--ignore-base-mismatch`` overrides).
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  lorafam generate "Name three rivers." --adapter runs/lora
  echo "2+2=" | lorafam generate --raw --max-new-tokens 4
  lorafam generate "A haiku" --temperature 0.8 --top-p 0.9 --seed 1 --stop "###"
"""


def add_common(p: argparse.ArgumentParser) -> None:
    from lorafam.commands._generation import add_sampling_arguments

    p.add_argument("--model", default=None, help="base model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", default=None, help="adapter folder (PEFT layout; lorafam's or PEFT's)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate (default 256)")
    add_sampling_arguments(p)
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--ignore-base-mismatch", action="store_true", help="load an adapter recorded for another base")
    p.add_argument("--device", default=None, help="cpu or cuda (default: best available)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (read from stdin when omitted)")
    p.add_argument("--raw", action="store_true", help="send the prompt without the chat template")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from lorafam.commands._generation import (
        AdapterMismatchError,
        chat_prompt,
        load_for_inference,
        sampling_from_args,
        stream,
    )

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    try:
        sampling = sampling_from_args(args)
        model, tok = load_for_inference(args.model, args.adapter, args.ignore_base_mismatch, args.device)
    except (AdapterMismatchError, FileNotFoundError, ValueError, KeyError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    if not args.raw:
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}
        ]
        prompt = chat_prompt(tok, msgs)
    stream(model, tok, prompt, args.max_new_tokens, sampling=sampling)
    return 0
