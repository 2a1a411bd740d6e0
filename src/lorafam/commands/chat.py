"""``lorafam chat``: a terminal chat (chat template, streamed tokens), with or without an adapter.

Type a message and press Enter; ``/reset`` clears the history, ``/exit`` (or Ctrl-D) quits. The conversation runs
on the same engine as ``lorafam serve`` (``lorafam.serve.batching``): each turn's keys/values go into the engine's
prefix cache, so the next turn only computes the new message, not the whole history again (the reused count is
shown after each reply).
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  lorafam chat --adapter runs/lora --system "Answer briefly."
  lorafam chat --temperature 0.7 --top-p 0.9 --seed 0"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lorafam.commands.generate import add_common

    add_common(p)


def run(args: argparse.Namespace, input_fn=input) -> int:  # input_fn: tests feed lines
    from pathlib import Path

    from rich.console import Console

    import lorafam as lf
    from lorafam.commands._generation import AdapterMismatchError, check_adapter_base, sampling_from_args
    from lorafam.serve.app import render_chat
    from lorafam.serve.batching import Engine, EngineError, GenRequest

    console = Console()
    err = Console(stderr=True, soft_wrap=True)
    try:
        sampling_from_args(args)  # the same checks as generate (ranges, top-p needs a temperature)
        if args.top_k is not None or args.repetition_penalty is not None:
            raise ValueError(
                "chat runs on the serve engine, whose sampler takes --temperature, --top-p, --seed and --stop; "
                "use lorafam generate for --top-k / --repetition-penalty"
            )
        model = lf.load_model(args.model, device=args.device)
        tok = lf.load_tokenizer(args.model)
        if args.adapter and not args.ignore_base_mismatch:
            check_adapter_base(args.adapter, model, args.model)
        engine = Engine(model, tok, base_id="base")
        name, template = "base", None
        if args.adapter:
            name = Path(args.adapter).name or "adapter"
            template = engine.load(name, args.adapter, check_base=False).chat_template
    except (AdapterMismatchError, EngineError, FileNotFoundError, ValueError, KeyError) as exc:
        err.print(f"[red]error:[/] {getattr(exc, 'message', exc)}", highlight=False)
        return 1
    engine.start()
    base = [{"role": "system", "content": args.system}] if args.system else []
    history = list(base)
    console.print("[dim]chat — /reset clears the history, /exit quits[/]")
    try:
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
            ids = render_chat(tok, history, template)
            print("assistant> ", end="", flush=True)
            req = GenRequest(
                model=name,
                prompt_ids=ids,
                max_tokens=max(1, min(args.max_new_tokens, engine.max_len - len(ids))),
                temperature=args.temperature,
                top_p=getattr(args, "top_p", None) or 1.0,
                seed=getattr(args, "seed", None),
                stop=_stops(getattr(args, "stop", None)),
                on_event=lambda kind, data: print(data["delta"], end="", flush=True) if kind == "text" else None,
            )
            try:
                done = engine.generate(req)
            except EngineError as exc:
                print()
                err.print(f"[red]error:[/] {exc.message}", highlight=False)
                history.pop()
                continue
            print()
            console.print(
                f"[dim]{done['completion_tokens']} tokens, reused {done['cached_tokens']} of "
                f"{done['prompt_tokens']} prompt tokens[/]",
                highlight=False,
            )
            history.append({"role": "assistant", "content": done["text"].strip()})
    finally:
        engine.close()


def _stops(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])
