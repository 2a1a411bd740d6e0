"""The batched multi-adapter engine behind ``lorafam serve`` and ``lorafam chat``.

One scheduler thread owns the model. Each turn of its loop (continuous batching, iteration-level scheduling):

1. runs queued management operations (adapter loads/unloads) between forwards, so a forward never sees a
   half-loaded adapter;
2. admits waiting requests up to ``max_batch`` running rows: each is prefilled alone on top of the prefix blocks it
   can reuse (see :mod:`lorafam.serve.kv`), and its first token is sampled;
3. runs **one** decode step for every running row at once — whatever adapter each row asked for. The base
   projections run once for the whole batch; a forward hook on each adapted base layer then adds, for each adapter
   present, its low-rank term to that adapter's rows only, at the adapter's own rank (:mod:`lorafam.serve.lowrank`);
   aLoRA rows add it only from their invocation on; base rows add nothing.
4. steps the rows of adapters without a low-rank form (the routed mixture) through the model's own forward, one row
   per call.

When every running and waiting request wants the same mergeable adapter for ``merge_after`` steps, its terms are
folded into copies of the base weights (the originals are kept, so unmerging is exact) and it runs at the base
model's speed; the first request for anything else swaps the originals back before it is admitted.

Adapters are built from their folders without being attached to the model (``lowrank.build_adapters``): a load that
fails leaves the model and every served adapter as they were. Only the mixture is attached (it needs the model's own
forward); its layers are kept inactive during batched forwards.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorafam.serve.adapters import AdapterOps
from lorafam.serve.kv import PrefixBlocks, SlotKV, register_attention
from lorafam.serve.mixing import Grouped, Mixed
from lorafam.serve.requests import EngineConfig, EngineError, GenRequest, Row, ServedAdapter
from lorafam.serve.rows import RowOps

__all__ = ["Engine", "EngineConfig", "EngineError", "GenRequest", "ServedAdapter"]


class Engine(AdapterOps, RowOps):
    """Continuous-batching, multi-adapter generation on one model (see the module docstring).

    Args:
        model: a transformers causal LM (kept in eval mode, owned by the engine's thread once started).
        tokenizer: its tokenizer (chat templates, detokenisation, stop strings).
        base_id: the id clients use for the base model.
        config: scheduling and cache settings.
        metrics: a :class:`lorafam.serve.metrics.Metrics` (optional).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        base_id: str = "base",
        config: EngineConfig | None = None,
        metrics: Any = None,
    ):
        from lorafam.core.adapter import AdaptedLayer
        from lorafam.core.inject import adaptable_layers
        from lorafam.serve.fastpath import _contiguous_input

        self.model = model.eval()
        self.tok = tokenizer
        self.base_id = base_id
        self.cfg = config or EngineConfig()
        self.metrics = metrics
        mc = model.config
        self.max_len = int(self.cfg.max_model_len or getattr(mc, "max_position_embeddings", 2048))
        heads = mc.num_attention_heads
        head_dim = getattr(mc, "head_dim", None) or mc.hidden_size // heads
        kv_heads = getattr(mc, "num_key_value_heads", None) or heads
        ref = next(model.parameters())
        self.device, self.dtype = ref.device, ref.dtype
        self.kv = SlotKV(mc.num_hidden_layers, kv_heads, head_dim, ref.dtype, ref.device)
        self.prefix = PrefixBlocks(self.cfg.block, self.cfg.cache_tokens)
        self.linears: dict[str, nn.Module] = {
            p: (m.base_layer if isinstance(m, AdaptedLayer) else m) for p, m in adaptable_layers(model).items()
        }
        self._groups: list[Any] | None = None
        self._mixed_key: tuple | None = None
        self._mixed: Grouped | Mixed | None = None
        self._hooks = [m.register_forward_hook(self._make_hook(p)) for p, m in self.linears.items()]
        head = model.get_output_embeddings()  # a transformers causal LM always has the method
        if head is not None:
            self._hooks.append(head.register_forward_pre_hook(_contiguous_input))
        register_attention()
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids = set([eos] if isinstance(eos, int) else (eos or []))
        if getattr(tokenizer, "eos_token_id", None) is not None:
            eos_ids.add(int(tokenizer.eos_token_id))
        self.eos = eos_ids
        self.adapters: OrderedDict[str, ServedAdapter] = OrderedDict()
        self.known: dict[str, Path] = {}
        self.adapter_dir: Path | None = None
        self._generation = 0
        self._waiting: queue.Queue[GenRequest] = queue.Queue()
        self._ops: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._running: list[Row] = []
        self._solo: list[Row] = []
        self._merged: ServedAdapter | None = None
        self._merged_orig: dict[str, nn.Parameter] = {}
        self._single_steps = 0
        self._wake = threading.Condition()
        self._lock = threading.Lock()  # in-flight counts (request threads and the scheduler)
        self._paused = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.step_log: deque[tuple[int, int, float]] = deque(maxlen=100_000)
        """(rows, distinct models, seconds) of recent decode steps (benchmarks read it)."""
        self.stats: dict[str, float] = {
            "decode_steps": 0,
            "max_batch_rows": 0,
            "max_batch_models": 0,
            "prefix_writes": 0,
            "merges": 0,
            "unmerges": 0,
        }

    # ------------------------------------------------------------------------------------------------------------
    # lifecycle
    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lorafam-engine", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop = True
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._unmerge()
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Within the block, requests queue up but none is admitted (lets tests put requests in one batch)."""
        self._paused.set()
        try:
            yield
        finally:
            self._paused.clear()
            with self._wake:
                self._wake.notify_all()

    def running_rows(self) -> int:
        """Rows being generated now (batched and solo)."""
        return len(self._running) + len(self._solo)

    def _call(self, fn: Callable[[], Any], timeout: float = 600) -> Any:
        """Run ``fn`` on the scheduler thread between forwards (directly when the engine is not started)."""
        if self._thread is None or threading.current_thread() is self._thread:
            return fn()
        fut: Future = Future()
        self._ops.put((fn, fut))
        with self._wake:
            self._wake.notify_all()
        return fut.result(timeout=timeout)

    # ------------------------------------------------------------------------------------------------------------
    # requests
    def submit(self, req: GenRequest) -> ServedAdapter | None:
        """Queue ``req``. Raises EngineError: 404 unknown model, 400 too long, 503 queue full."""
        if self._waiting.qsize() >= self.cfg.max_queue:
            if self.metrics:
                self.metrics.rejected.inc()
            raise EngineError(
                f"the request queue is full ({self.cfg.max_queue} waiting); retry later", 503, retry_after=1
            )
        if not req.prompt_ids:
            raise EngineError("the prompt is empty", 400, "prompt")
        if len(req.prompt_ids) + req.max_tokens > self.max_len:
            raise EngineError(
                f"this model's maximum context length is {self.max_len} tokens; the prompt has "
                f"{len(req.prompt_ids)} and max_tokens asks for {req.max_tokens} more",
                400,
                "max_tokens",
            )
        vocab = self.model.get_input_embeddings().num_embeddings
        if max(req.prompt_ids) >= vocab or min(req.prompt_ids) < 0:
            raise EngineError(f"prompt token ids must be in [0, {vocab})", 400, "prompt")
        rec = self.resolve(req.model)
        if rec is not None:
            with self._lock:
                rec.in_flight += 1
            with contextlib.suppress(KeyError):
                self.adapters.move_to_end(rec.name)
        self._waiting.put(req)
        if self.metrics:
            self.metrics.queue.set(self._waiting.qsize())
        with self._wake:
            self._wake.notify_all()
        return rec

    def generate(self, req: GenRequest, timeout: float = 600) -> dict[str, Any]:
        """Blocking helper: submit and wait; returns the ``done`` payload plus ``text``."""
        done = threading.Event()
        out: dict[str, Any] = {"text": "", "token_ids": [], "logprobs": []}
        previous = req.on_event

        def on_event(kind: str, data: dict[str, Any]) -> None:
            previous(kind, data)
            if kind == "text":
                out["text"] += data["delta"]
                out["token_ids"] += data["token_ids"]
                out["logprobs"] += data.get("logprobs") or []
            else:
                out.update(data)
                out["kind"] = kind
                done.set()

        req.on_event = on_event
        self.submit(req)
        if not done.wait(timeout):
            req.cancelled = True
            raise TimeoutError("generation timed out")
        if out.get("kind") == "error":
            raise EngineError(out["message"], out.get("status", 500))
        return out

    # ------------------------------------------------------------------------------------------------------------
    # the scheduler thread
    def _loop(self) -> None:
        with torch.no_grad():
            while not self._stop:
                self._run_ops()
                if self._paused.is_set() or (
                    not self._running and not self._solo and self._waiting.empty() and self._ops.empty()
                ):
                    with self._wake:
                        self._wake.wait(timeout=0.05)
                    continue
                try:
                    self._step()
                except Exception as exc:  # a failed forward fails its rows, never the server
                    import traceback

                    traceback.print_exc()
                    for row in self._running + self._solo:
                        self._fail(row, f"engine error: {type(exc).__name__}: {exc}")
                    self._running, self._solo = [], []
                    self.kv.lengths.clear()

    def _run_ops(self) -> None:
        while True:
            try:
                fn, fut = self._ops.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def _step(self) -> None:
        self._merge_policy()
        while len(self._running) + len(self._solo) < self.cfg.max_batch:
            try:
                req = self._waiting.get_nowait()
            except queue.Empty:
                break
            if self.metrics:
                self.metrics.queue.set(self._waiting.qsize())
            if req.cancelled:
                self._release(req)
                continue
            rec = self.adapters.get(req.model) if req.model != self.base_id else None
            if self._merged is not None and rec is not self._merged:
                self._unmerge()
            row = Row(req=req, adapter=rec, ids=list(req.prompt_ids))
            row.gen = torch.Generator(device="cpu")
            row.gen.manual_seed(req.seed if req.seed is not None else int(torch.randint(0, 2**62, (1,))))
            try:
                if rec is not None and rec.solo:
                    self._prefill_solo(row)
                else:
                    self._prefill(row)
            except Exception as exc:
                import traceback

                traceback.print_exc()
                if row.slot >= 0:
                    self._free_slot(row)
                self._fail(row, f"engine error during prefill: {type(exc).__name__}: {exc}")
        if self._running:
            self._decode()
        for row in list(self._solo):
            self._step_solo(row)
        if not self._running:
            self.kv.shrink()
