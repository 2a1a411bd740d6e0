"""The generation routes of ``lorafam serve``: ``POST /v1/completions`` and ``POST /v1/chat/completions``.

Each request becomes one engine :class:`~lorafam.serve.requests.GenRequest` per prompt; the scheduler thread's
events (text deltas, the final ``done``) move onto the event loop through :class:`EventQueue` and are returned as
one JSON body or streamed as server-sent events (sse-starlette) ending with ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from lorafam.serve.batching import Engine
from lorafam.serve.chat_format import render_chat
from lorafam.serve.requests import EngineError, GenRequest
from lorafam.serve.schemas import ChatRequest, CompletionRequest, ContentPart, SamplingBody, error_body


def usage(done: dict[str, Any]) -> dict[str, Any]:
    p, c = done["prompt_tokens"], done["completion_tokens"]
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": done["cached_tokens"]},
    }


def sum_usage(dones: list[dict[str, Any]]) -> dict[str, Any]:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
    for d in dones:
        for k in total:
            total[k] += d[k]
    return usage(total)


class EventQueue:
    """Events of one engine request, moved from the scheduler thread onto the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, data))


def stops(stop: str | list[str] | None) -> list[str]:
    out = [stop] if isinstance(stop, str) else list(stop or [])
    if len(out) > 4 or any(not s for s in out):
        raise EngineError("stop: up to 4 non-empty strings", 400, "stop")
    return out


def sampling(body: SamplingBody) -> dict[str, Any]:
    """The GenRequest fields shared by both routes (OpenAI's defaults: temperature 1, top_p 1)."""
    return {
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "seed": body.seed,
        "stop": stops(body.stop),
        "ignore_eos": body.ignore_eos,
    }


def include_usage(body: SamplingBody) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def submit(engine: Engine, req: GenRequest) -> EventQueue:
    stream = EventQueue(asyncio.get_running_loop())
    req.on_event = stream
    await run_in_threadpool(engine.submit, req)
    return stream


async def collect(stream: EventQueue) -> tuple[str, list[Any], dict[str, Any]]:
    """(text, generated-token logprob entries, the ``done`` payload) of one request."""
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


def logprobs_block(tok: Any, prompt_lp: list[Any] | None, gen_lp: list[Any], prompt_ids: list[int] | None) -> dict:
    """Completions' ``logprobs`` object (tokens, token_logprobs, top_logprobs, text_offset); prompt first (echo)."""
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
        piece = tok.decode([t])
        out["tokens"].append(piece)
        out["text_offset"].append(offset)
        offset += len(piece)
        out["token_logprobs"].append(None if e is None else e["logprob"])
        out["top_logprobs"].append(None if e is None else {tok.decode([i]): v for i, v in e["top"].items()})
    return out


def content_text(content: str | list[ContentPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content)


def prompt_ids(tok: Any, prompt: Any) -> list[list[int]]:
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


def sse(gen: Any) -> EventSourceResponse:
    return EventSourceResponse(gen, ping=3600, sep="\n")


class Completions:
    """``POST /v1/completions``: text, texts or token ids; ``logprobs`` and ``echo`` (prompt scoring)."""

    def __init__(self, engine: Engine):
        self.engine, self.tok = engine, engine.tok

    async def __call__(self, body: CompletionRequest, request: Request) -> Any:
        prompts = prompt_ids(self.tok, body.prompt)
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        if max_tokens == 0 and not body.echo:
            raise EngineError("max_tokens: 0 is only allowed with echo=true (prompt scoring)", 400, "max_tokens")
        if body.stream and body.echo:
            raise EngineError("echo is not supported with stream=true", 400, "echo")
        reqs = [
            GenRequest(
                model=body.model,
                prompt_ids=ids,
                max_tokens=max(1, max_tokens),
                logprobs=body.logprobs,
                prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None,
                **sampling(body),
            )
            for ids in prompts
        ]
        streams = [await submit(self.engine, r) for r in reqs]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = body.model
        if body.stream:
            return sse(self.chunks(streams, reqs, head, include_usage(body)))
        try:
            results = [await collect(s) for s in streams]
        except asyncio.CancelledError:
            for r in reqs:
                r.cancelled = True
            raise
        return self.body(body, prompts, results, head, score_only=max_tokens == 0)

    def body(
        self, body: CompletionRequest, prompts: list[list[int]], results: list[tuple], head: dict, score_only: bool
    ) -> dict[str, Any]:
        choices = []
        for i, ((text, lps, done), ids) in enumerate(zip(results, prompts)):
            lp = None
            if body.logprobs is not None:
                lp = logprobs_block(
                    self.tok,
                    done["prompt_logprobs"] if body.echo else None,
                    [] if score_only else lps,
                    ids if body.echo else None,
                )
            prefix = self.tok.decode(ids) if body.echo else ""
            finish = "length" if score_only else done["finish_reason"]
            text = "" if score_only else text
            choices.append({"index": i, "text": prefix + text, "logprobs": lp, "finish_reason": finish})
        total = sum_usage([d for _, _, d in results])
        if score_only:
            total["completion_tokens"], total["total_tokens"] = 0, total["prompt_tokens"]
        return {**head, "choices": choices, "usage": total}

    async def chunks(self, streams: list[EventQueue], reqs: list[GenRequest], head: dict, with_usage: bool) -> Any:
        dones = []
        try:
            for i, s in enumerate(streams):
                while True:
                    kind, data = await s.queue.get()
                    if kind == "error":
                        yield json.dumps(error_body(500, data["message"]))
                        return
                    if kind == "done":
                        dones.append(data)
                        choice = {"index": i, "text": "", "logprobs": None, "finish_reason": data["finish_reason"]}
                        yield json.dumps({**head, "choices": [choice]})
                        break
                    if data["delta"] or data.get("logprobs"):
                        lps = data.get("logprobs")
                        lp = logprobs_block(self.tok, None, lps, None) if lps else None
                        choice = {"index": i, "text": data["delta"], "logprobs": lp, "finish_reason": None}
                        yield json.dumps({**head, "choices": [choice]})
            if with_usage:
                yield json.dumps({**head, "choices": [], "usage": sum_usage(dones)})
            yield "[DONE]"
        finally:
            for r in reqs:
                r.cancelled = True  # a no-op once finished; stops the row when the client went away


class ChatCompletions:
    """``POST /v1/chat/completions``: the adapter folder's chat template when it has one, else the base's."""

    def __init__(self, engine: Engine, default_max_tokens: int):
        self.engine, self.tok, self.default_max_tokens = engine, engine.tok, default_max_tokens

    async def __call__(self, body: ChatRequest, request: Request) -> Any:
        if body.logprobs:
            raise EngineError("logprobs on chat completions are not served; use /v1/completions", 400, "logprobs")
        rec = await run_in_threadpool(self.engine.resolve, body.model)
        messages = [{"role": m.role, "content": content_text(m.content)} for m in body.messages]
        template = rec.chat_template if rec is not None else None
        ids = render_chat(self.tok, messages, template, body.add_generation_prompt)
        limit = body.max_completion_tokens or body.max_tokens
        if limit is None:
            limit = max(1, min(self.default_max_tokens, self.engine.max_len - len(ids)))
        req = GenRequest(model=body.model, prompt_ids=ids, max_tokens=limit, **sampling(body))
        stream = await submit(self.engine, req)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time())}
        head["model"] = body.model
        if body.stream:
            return sse(self.chunks(stream, req, {**head, "object": "chat.completion.chunk"}, include_usage(body)))
        try:
            text, _, done = await collect(stream)
        except asyncio.CancelledError:
            req.cancelled = True
            raise
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": done["finish_reason"]}
        return {**head, "choices": [choice], "usage": usage(done)}

    async def chunks(self, stream: EventQueue, req: GenRequest, head: dict, with_usage: bool) -> Any:
        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return json.dumps({**head, "choices": [choice]})

        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, data = await stream.queue.get()
                if kind == "error":
                    yield json.dumps(error_body(500, data["message"]))
                    return
                if kind == "text":
                    if data["delta"]:
                        yield chunk({"content": data["delta"]})
                    continue
                yield chunk({}, data["finish_reason"])
                if with_usage:
                    yield json.dumps({**head, "choices": [], "usage": usage(data)})
                break
            yield "[DONE]"
        finally:
            req.cancelled = True


def add_generation_routes(app: FastAPI, engine: Engine, default_max_tokens: int) -> None:
    app.post("/v1/completions")(Completions(engine).__call__)
    app.post("/v1/chat/completions")(ChatCompletions(engine, default_max_tokens).__call__)
