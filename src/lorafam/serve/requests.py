"""The engine's data: its settings, the adapters it holds, requests, running rows, and its error type."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lorafam.serve.lowrank import LowRank


class EngineError(Exception):
    """An error with the HTTP status and the OpenAI ``param`` it maps to."""

    def __init__(
        self, message: str, status: int = 400, param: str | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.message, self.status, self.param, self.retry_after = message, status, param, retry_after


@dataclass
class EngineConfig:
    max_batch: int = 32
    """Running rows decoded together at most."""
    max_queue: int = 256
    """Waiting requests at most; one more gets 503 with Retry-After."""
    max_loaded: int | None = None
    """Adapters held at once (least recently used evicted first; None: no limit)."""
    block: int = 16
    """Tokens per prefix-cache block."""
    cache_tokens: int = 8192
    """Prefix-cache capacity in tokens (0 disables it)."""
    merge_hot: bool = True
    """Merge the adapter when all traffic is one mergeable adapter."""
    merge_after: int = 8
    """... for this many scheduler steps in a row."""
    mixed_kernel: str = "grouped"
    """How a decode step adds the terms of several adapters: ``"grouped"`` (rows grouped by adapter, each row at its
    own adapter's rank) or ``"concat"`` (one product with every adapter's factors concatenated, masked per row)."""
    max_model_len: int | None = None
    """Prompt + generation limit; default: the model's ``max_position_embeddings``."""

    def __post_init__(self) -> None:
        if self.mixed_kernel not in ("grouped", "concat"):
            raise ValueError(f"EngineConfig.mixed_kernel: {self.mixed_kernel!r}; valid: 'grouped', 'concat'")


@dataclass(eq=False)
class ServedAdapter:
    """One adapter held by the engine."""

    name: str
    path: str
    method: str
    rank: int
    config: Any
    layers: dict[str, LowRank] = field(default_factory=dict)
    invocation: list[int] | None = None
    solo: bool = False
    """No low-rank form (the mixture): attached to the model, run through its own forward."""
    chat_template: str | None = None
    created: int = 0
    generation: int = 0
    in_flight: int = 0
    removing: bool = False

    @property
    def namespace(self) -> str:
        return f"adapter:{self.name}#{self.generation}"

    @property
    def mergeable(self) -> bool:
        return not self.solo and self.invocation is None and bool(self.layers)

    def ranks(self) -> tuple[int, int]:
        rs = [lr.rank for lr in self.layers.values()] or [self.rank]
        return min(rs), max(rs)


@dataclass
class GenRequest:
    """One generation. ``on_event(kind, data)`` is called from the scheduler thread:
    ``("text", {"delta", "token_ids", "logprobs"})`` as text becomes final, ``("done", {...})`` once, or
    ``("error", {"message", "status"})``."""

    model: str
    prompt_ids: list[int]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    """Top-k log-probabilities for each generated token (completions' ``logprobs``)."""
    prompt_logprobs: int | None = None
    """Also score the prompt tokens (``echo`` with ``logprobs``); the prompt is then recomputed, not reused."""
    ignore_eos: bool = False
    use_prefix_cache: bool = True
    """False: compute the whole prompt even when the shared cache holds some of it (benchmarks' baseline)."""
    on_event: Callable[[str, dict[str, Any]], None] = lambda kind, data: None
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class Row:
    req: GenRequest
    adapter: ServedAdapter | None
    ids: list[int]
    slot: int = -1
    reused: int = 0
    start: int | None = None
    """aLoRA: absolute start of the last invocation in the prompt (None: the adapter never switches on)."""
    new: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    gen: torch.Generator | None = None
    first_token_at: float | None = None
    solo_cache: Any = None
    finish: str | None = None
    prompt_lp: list[Any] | None = None
    gen_lp: list[Any] = field(default_factory=list)

    @property
    def model_name(self) -> str:
        return self.req.model
