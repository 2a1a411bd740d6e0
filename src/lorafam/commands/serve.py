"""``lorafam serve``: an OpenAI/vLLM-compatible HTTP server that batches many adapters of any member.

    lorafam serve [--model DIR] [--adapter NAME=DIR ...] [--adapter-dir DIR] [--host 127.0.0.1] [--port 8000]
                  [--api-key KEY] [--max-loaded N] [--allow-runtime-adapters]

``model`` in a request picks the adapter (the base model's id picks the base). Adapters under ``--adapter-dir`` are
listed by ``/v1/models`` and loaded on first use; ``--max-loaded`` keeps at most N in memory (least recently used
first out). The try-it page is at ``http://HOST:PORT/``. Needs the ``serve`` extra (FastAPI, uvicorn,
sse-starlette, prometheus-client). See docs/serve.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """examples:
  lorafam serve --adapter judge=runs/alora --adapter tutor=runs/dora      two adapters + the base, on :8000
  lorafam serve --adapter-dir runs/ --max-loaded 8 --api-key s3cret        every folder in runs/, 8 held at once
  lorafam serve --allow-runtime-adapters                                   then POST /v1/load_lora_adapter
  curl localhost:8000/v1/completions -d '{"model": "judge", "prompt": "Hi", "max_tokens": 8}' -H 'content-type: application/json'
"""

EPILOG = """examples:
  lorafam serve --adapter sql=runs/sql --adapter chat=runs/chat
  lorafam serve --adapter-dir runs --max-loaded 4 --port 8000
  curl localhost:8000/v1/completions -d '{"model": "sql", "prompt": "SELECT", "max_tokens": 8}'"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="base model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="serve the adapter folder DIR as model NAME (repeatable)",
    )
    p.add_argument("--adapter-dir", default=None, help="folder of adapter folders: listed, loaded on first use")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    p.add_argument("--max-loaded", type=int, default=None, help="adapters held at once (LRU eviction)")
    p.add_argument(
        "--allow-runtime-adapters",
        action="store_true",
        help="enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter",
    )
    p.add_argument("--served-model-name", default=None, help="id of the base model in the API")
    p.add_argument("--max-batch", type=int, default=32, help="rows decoded together at most (default 32)")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before 503 (default 256)")
    p.add_argument("--cache-tokens", type=int, default=8192, help="prefix-cache capacity in tokens (0: off)")
    p.add_argument("--no-merge-hot", action="store_true", help="never merge a single hot adapter")
    p.add_argument("--ignore-base-mismatch", action="store_true", help="load adapters recorded for another base")
    p.add_argument("--device", default=None, help="cpu or cuda (default: best available)")


def parse_adapters(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter {item!r}: expected NAME=DIR")
        out.append((name, path))
    return out


def build_engine(args: argparse.Namespace) -> Any:
    """Model + tokenizer + engine (+ metrics) from the shared flags; adapters loaded; not started."""
    import lorafam as lf
    from lorafam.serve.batching import Engine, EngineConfig
    from lorafam.serve.metrics import Metrics

    model = lf.load_model(args.model, device=args.device)
    tok = lf.load_tokenizer(args.model)
    name = getattr(args, "served_model_name", None) or _base_id(args.model, model)
    cfg = EngineConfig(
        max_batch=getattr(args, "max_batch", 32),
        max_queue=getattr(args, "max_queue", 256),
        max_loaded=getattr(args, "max_loaded", None),
        cache_tokens=getattr(args, "cache_tokens", 8192),
        merge_hot=not getattr(args, "no_merge_hot", False),
    )
    engine = Engine(model, tok, base_id=name, config=cfg, metrics=Metrics())
    if getattr(args, "adapter_dir", None):
        engine.set_adapter_dir(args.adapter_dir)
    for adapter_name, path in parse_adapters(getattr(args, "adapter", []) or []):
        engine.load(adapter_name, path, check_base=not args.ignore_base_mismatch)
    return engine


def _base_id(name: str | None, model: Any) -> str:
    if name:
        return Path(name).name
    return str(getattr(model.config, "_name_or_path", "base")).split("/")[-1]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    err = Console(stderr=True, soft_wrap=True)
    try:
        import uvicorn

        from lorafam.serve.app import create_app
        from lorafam.serve.batching import EngineError
    except ImportError as exc:
        err.print(f"[red]error:[/] lorafam serve needs the 'serve' extra: pip install 'lorafam[serve]' ({exc})")
        return 1
    try:
        engine = build_engine(args)
    except (EngineError, FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/] {getattr(exc, 'message', exc)}", highlight=False)
        return 1
    engine.start()
    app = create_app(engine, api_key=args.api_key, allow_runtime_adapters=args.allow_runtime_adapters)
    ids = ", ".join(engine.model_ids())
    err.print(f"serving {ids} on http://{args.host}:{args.port}/ (page at /, API at /v1)", highlight=False)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()
    return 0
