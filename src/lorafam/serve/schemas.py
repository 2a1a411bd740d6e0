"""Request bodies of ``lorafam serve`` (field names and ranges as in OpenAI's and vLLM's APIs) and OpenAI's
error object ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingBody(BaseModel):
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


class CompletionRequest(SamplingBody):
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


class ChatRequest(SamplingBody):
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


def validation_error(exc: RequestValidationError) -> JSONResponse:
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
