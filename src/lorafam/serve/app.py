"""The HTTP layer of ``lorafam serve``: vLLM's OpenAI-compatible API on FastAPI, streaming with sse-starlette.

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (:mod:`lorafam.serve.routes`),
``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter``, ``GET /health``, ``GET /metrics`` (Prometheus
text) and ``GET /`` (the try-it page). Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``
(:mod:`lorafam.serve.schemas`) so that the official client raises the matching exception (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 409 ConflictError, 503 with ``Retry-After``).
"""

from __future__ import annotations

import socket
import threading
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from lorafam.serve.batching import Engine
from lorafam.serve.chat_format import render_chat
from lorafam.serve.requests import EngineError
from lorafam.serve.routes import add_generation_routes
from lorafam.serve.schemas import LoadRequest, UnloadRequest, error_response, validation_error

__all__ = ["ServerThread", "create_app", "render_chat"]


def create_app(
    engine: Engine,
    api_key: str | None = None,
    allow_runtime_adapters: bool = False,
    default_max_tokens: int = 256,
) -> FastAPI:
    """The FastAPI application serving ``engine``."""
    app = FastAPI(title="lorafam serve", version="1", docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    _add_errors_and_auth(app, api_key)
    _add_info_routes(app, engine)
    _add_adapter_routes(app, engine, allow_runtime_adapters)
    add_generation_routes(app, engine, default_max_tokens)
    return app


def _add_errors_and_auth(app: FastAPI, api_key: str | None) -> None:
    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc)

    @app.exception_handler(EngineError)
    async def _on_engine(request: Request, exc: EngineError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.retry_after)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        if api_key is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if given != f"Bearer {api_key}":
                why = "missing" if not given else "wrong"
                return error_response(401, f"{why} API key: send 'Authorization: Bearer <key>' (--api-key)")
        return await call_next(request)


def _add_info_routes(app: FastAPI, engine: Engine) -> None:
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": _model_cards(engine)}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "adapters_loaded": len(engine.adapters), "running": engine.running_rows()}

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        body = engine.metrics.render() if engine.metrics is not None else b""
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("lorafam.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html)


def _add_adapter_routes(app: FastAPI, engine: Engine, allow_runtime_adapters: bool) -> None:
    def _gate() -> None:
        if not allow_runtime_adapters:
            raise EngineError(
                "runtime adapter loading is off; start the server with --allow-runtime-adapters", 403
            )

    @app.post("/v1/load_lora_adapter")
    async def load_lora(body: LoadRequest) -> PlainTextResponse:
        _gate()
        await run_in_threadpool(engine.load, body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(body: UnloadRequest) -> PlainTextResponse:
        _gate()
        await run_in_threadpool(engine.unload, body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


def _model_cards(engine: Engine) -> list[dict[str, Any]]:
    created = int(time.time())
    cards = [
        {
            "id": engine.base_id,
            "object": "model",
            "created": created,
            "owned_by": "lorafam",
            "root": str(getattr(engine.model.config, "_name_or_path", engine.base_id)),
            "parent": None,
            "max_model_len": engine.max_len,
        }
    ]
    for name in sorted(set(engine.adapters) | set(engine.known)):
        rec = engine.adapters.get(name)
        if rec is not None and rec.removing:
            continue
        card = {
            "id": name,
            "object": "model",
            "owned_by": "lorafam",
            "parent": engine.base_id,
            "max_model_len": engine.max_len,
        }
        if rec is not None:
            lo, hi = rec.ranks()
            card.update(
                created=rec.created,
                root=rec.path,
                method=rec.method,
                rank=rec.rank,
                layer_ranks=[lo, hi],
                loaded=True,
                batching="own" if rec.solo else "shared",
            )
        else:
            path = engine.known[name]
            card.update(created=created, root=str(path), loaded=False, **_peek(path))
        cards.append(card)
    return cards


def _peek(path: Any) -> dict[str, Any]:
    import warnings

    from lorafam.core.checkpoint import config_from_peft, read_adapter_config
    from lorafam.serve.lowrank import served_method

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = config_from_peft(read_adapter_config(path))
    except (OSError, ValueError, KeyError, TypeError):
        return {"method": None, "rank": None}
    return {"method": served_method(cfg), "rank": cfg.rank}


# ---------------------------------------------------------------------------------------------------------------
class ServerThread:
    """A real uvicorn server on a loopback socket, in a background thread (tests, benchmarks, ``lorafam chat``).

    ``port=0`` picks a free port; :attr:`url` is the base URL (``http://127.0.0.1:PORT``).
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=30, backlog=1024)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
