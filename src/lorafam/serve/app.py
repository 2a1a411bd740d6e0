"""The HTTP layer of ``lorafam serve``: vLLM's OpenAI-compatible API on FastAPI, streaming with sse-starlette.

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``, ``POST /v1/load_lora_adapter``,
``POST /v1/unload_lora_adapter``, ``GET /health``, ``GET /metrics`` (Prometheus text) and ``GET /`` (the try-it
page). Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` so that the official client
raises the matching exception (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 409 ConflictError,
503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from lorafam.serve.batching import Engine, EngineError, GenRequest

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


# ---------------------------------------------------------------------------------------------------------------
# request bodies (field names and ranges as in OpenAI's and vLLM's APIs)
class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is served")
    ignore_eos: bool = False


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    add_generation_prompt: bool = True


class LoadRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None


# ---------------------------------------------------------------------------------------------------------------
def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object, for JSON responses and for an error event inside a stream."""
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "APIError"), "param": param, "code": status}
    }


def error_response(
    status: int, message: str, param: str | None = None, retry_after: float | None = None
) -> JSONResponse:
    body = error_body(status, message, param)
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return error_response(400, f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # pydantic reports union members as extra loc parts (e.g. prompt.str); keep the field path
    field_path = ".".join(p for p in loc if p not in ("str", "list[str]", "list[int]", "list[list[int]]", "int"))
    message = f"{field_path or 'body'}: {first.get('msg', 'invalid value')}"
    if first.get("input") is not None and not isinstance(first.get("input"), (dict, list)):
        message += f" (got {first['input']!r})"
    return error_response(400, message, field_path or None)


def _usage(done: dict[str, Any]) -> dict[str, Any]:
    p, c = done["prompt_tokens"], done["completion_tokens"]
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": done["cached_tokens"]},
    }


def _sum_usage(dones: list[dict[str, Any]]) -> dict[str, Any]:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
    for d in dones:
        for k in total:
            total[k] += d[k]
    return _usage(total)


class _Stream:
    """Events of one engine request, moved from the scheduler thread onto the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, data))


def create_app(
    engine: Engine,
    api_key: str | None = None,
    allow_runtime_adapters: bool = False,
    default_max_tokens: int = 256,
) -> FastAPI:
    """The FastAPI application serving ``engine``."""
    app = FastAPI(title="lorafam serve", version="1", docs_url="/docs", redoc_url=None)
    app.state.engine = engine
    tok = engine.tok

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

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

    # --- models, health, metrics, page ---------------------------------------------------------------------
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": _model_cards(engine)}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "adapters_loaded": len(engine.adapters), "running": len(engine._running)}

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        body = engine.metrics.render() if engine.metrics is not None else b""
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("lorafam.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html)

    # --- runtime adapters ----------------------------------------------------------------------------------
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

    # --- generation ----------------------------------------------------------------------------------------
    def _stops(stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise EngineError("stop: up to 4 non-empty strings", 400, "stop")
        return stops

    def _sampling(body: _Sampling) -> dict[str, Any]:
        return {
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "seed": body.seed,
            "stop": _stops(body.stop),
            "ignore_eos": body.ignore_eos,
        }

    async def _submit(req: GenRequest) -> _Stream:
        stream = _Stream(asyncio.get_running_loop())
        req.on_event = stream
        await run_in_threadpool(engine.submit, req)
        return stream

    async def _collect(stream: _Stream) -> tuple[str, list[Any], dict[str, Any]]:
        text, lps = "", []
        while True:
            kind, data = await stream.queue.get()
            if kind == "text":
                text += data["delta"]
                lps += data.get("logprobs") or []
            elif kind == "done":
                return text, lps, data
            else:
                raise EngineError(data["message"], data.get("status", 500))

    def _piece(token: int) -> str:
        return tok.decode([token])

    def _logprobs_block(prompt_lp: list[Any] | None, gen_lp: list[Any], prompt_ids: list[int] | None) -> dict:
        entries: list[Any] = []
        tokens: list[int] = []
        if prompt_lp is not None and prompt_ids is not None:
            entries += prompt_lp
            tokens += prompt_ids
        entries += gen_lp
        tokens += [e["token"] for e in gen_lp]
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        offset = 0
        for t, e in zip(tokens, entries):
            piece = _piece(t)
            out["tokens"].append(piece)
            out["text_offset"].append(offset)
            offset += len(piece)
            out["token_logprobs"].append(None if e is None else e["logprob"])
            out["top_logprobs"].append(None if e is None else {_piece(i): v for i, v in e["top"].items()})
        return out

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        prompts = _prompts(tok, body.prompt)
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        if max_tokens == 0 and not body.echo:
            raise EngineError("max_tokens: 0 is only allowed with echo=true (prompt scoring)", 400, "max_tokens")
        if body.stream and body.echo:
            raise EngineError("echo is not supported with stream=true", 400, "echo")
        score_only = max_tokens == 0
        sampling = _sampling(body)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        reqs = [
            GenRequest(
                model=body.model,
                prompt_ids=ids,
                max_tokens=max(1, max_tokens),
                logprobs=body.logprobs,
                prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None,
                **sampling,
            )
            for ids in prompts
        ]
        streams = [await _submit(r) for r in reqs]
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(_completion_chunks(streams, reqs, rid, created, body.model, include_usage, request))
        results = []
        try:
            for s in streams:
                results.append(await _collect(s))
        except asyncio.CancelledError:
            for r in reqs:
                r.cancelled = True
            raise
        choices = []
        for i, ((text, lps, done), ids) in enumerate(zip(results, prompts)):
            gen_lp = [] if score_only else lps
            if score_only:
                text = ""
            lp = None
            if body.logprobs is not None:
                lp = _logprobs_block(
                    done["prompt_logprobs"] if body.echo else None, gen_lp, ids if body.echo else None
                )
            prefix = tok.decode(ids) if body.echo else ""
            finish = "length" if score_only else done["finish_reason"]
            choices.append({"index": i, "text": prefix + text, "logprobs": lp, "finish_reason": finish})
        usage = _sum_usage([d for _, _, d in results])
        if score_only:
            usage["completion_tokens"], usage["total_tokens"] = 0, usage["prompt_tokens"]
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": choices,
            "usage": usage,
        }

    async def _completion_chunks(
        streams: list[_Stream],
        reqs: list[GenRequest],
        rid: str,
        created: int,
        model: str,
        include_usage: bool,
        request: Request,
    ) -> Any:
        dones = []
        try:
            for i, s in enumerate(streams):
                while True:
                    kind, data = await s.queue.get()
                    if kind == "error":
                        yield json.dumps(error_body(500, data["message"]))
                        return
                    base = {"id": rid, "object": "text_completion", "created": created, "model": model}
                    if kind == "text":
                        if data["delta"] or data.get("logprobs"):
                            lp = _logprobs_block(None, data["logprobs"], None) if data.get("logprobs") else None
                            choice = {"index": i, "text": data["delta"], "logprobs": lp, "finish_reason": None}
                            yield json.dumps({**base, "choices": [choice]})
                    else:
                        dones.append(data)
                        choice = {"index": i, "text": "", "logprobs": None, "finish_reason": data["finish_reason"]}
                        yield json.dumps({**base, "choices": [choice]})
                        break
            if include_usage:
                base = {"id": rid, "object": "text_completion", "created": created, "model": model}
                yield json.dumps({**base, "choices": [], "usage": _sum_usage(dones)})
            yield "[DONE]"
        finally:
            for r in reqs:
                r.cancelled = True  # a no-op once finished; stops the row when the client went away

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Any:
        if body.logprobs:
            raise EngineError("logprobs on chat completions are not served; use /v1/completions", 400, "logprobs")
        rec = await run_in_threadpool(engine.resolve, body.model)
        messages = [{"role": m.role, "content": _content(m.content)} for m in body.messages]
        ids = render_chat(
            tok, messages, rec.chat_template if rec is not None else None, body.add_generation_prompt
        )
        limit = body.max_completion_tokens or body.max_tokens
        max_tokens = limit if limit is not None else max(1, min(default_max_tokens, engine.max_len - len(ids)))
        req = GenRequest(model=body.model, prompt_ids=ids, max_tokens=max_tokens, **_sampling(body))
        stream = await _submit(req)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(_chat_chunks(stream, req, rid, created, body.model, include_usage))
        try:
            text, _, done = await _collect(stream)
        except asyncio.CancelledError:
            req.cancelled = True
            raise
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": done["finish_reason"],
                }
            ],
            "usage": _usage(done),
        }

    async def _chat_chunks(
        stream: _Stream, req: GenRequest, rid: str, created: int, model: str, include_usage: bool
    ) -> Any:
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
        try:
            first = {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
            yield json.dumps({**base, "choices": [first]})
            while True:
                kind, data = await stream.queue.get()
                if kind == "error":
                    yield json.dumps(error_body(500, data["message"]))
                    return
                if kind == "text":
                    if data["delta"]:
                        choice = {
                            "index": 0,
                            "delta": {"content": data["delta"]},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                        yield json.dumps({**base, "choices": [choice]})
                    continue
                last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": data["finish_reason"]}
                yield json.dumps({**base, "choices": [last]})
                if include_usage:
                    yield json.dumps({**base, "choices": [], "usage": _usage(data)})
                break
            yield "[DONE]"
        finally:
            req.cancelled = True

    return app


def _sse(gen: Any) -> EventSourceResponse:
    return EventSourceResponse(gen, ping=3600, sep="\n")


def _content(content: str | list[ContentPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content)


def _prompts(tok: Any, prompt: Any) -> list[list[int]]:
    """A completions ``prompt`` (text, texts, ids, lists of ids) → token id lists."""
    if isinstance(prompt, str):
        return [tok(prompt).input_ids]
    if not prompt:
        raise EngineError("prompt: empty", 400, "prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if all(isinstance(p, str) for p in prompt):
        return [tok(p).input_ids for p in prompt]
    return [list(p) for p in prompt]


def render_chat(
    tok: Any, messages: list[dict[str, str]], template: str | None, add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of a conversation, with the adapter's chat template when it has one, else the tokenizer's."""
    if template is None and not getattr(tok, "chat_template", None):
        from lorafam.commands._generation import chat_prompt

        text = chat_prompt(tok, messages)
    else:
        try:
            text = tok.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja errors from a bad template or unsupported roles
            raise EngineError(f"messages: the chat template cannot render them ({exc})", 400, "messages") from exc
    return tok(text, add_special_tokens=False).input_ids


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

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = config_from_peft(read_adapter_config(path))
    except (OSError, ValueError, KeyError, TypeError):
        return {"method": None, "rank": None}
    method = "rslora" if cfg.method == "lora" and getattr(cfg, "use_rslora", False) else cfg.method
    return {"method": method, "rank": int(getattr(cfg, "rank", 0) or 0)}


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
