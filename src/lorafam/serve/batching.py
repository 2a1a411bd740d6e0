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
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lorafam.serve.kv import ATTN_NAME, PrefixBlocks, SlotKV, SlotView, register_attention
from lorafam.serve.lowrank import BuiltAdapter, LowRank, build_adapters, export_adapter


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
    max_model_len: int | None = None
    """Prompt + generation limit; default: the model's ``max_position_embeddings``."""


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
class _Row:
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


@dataclass
class _Group:
    """One adapter's term on some rows of a call."""

    layers: dict[str, LowRank]
    rows: Tensor | None  # None: every row of the call
    tok: int = 0  # first adapted token of the call (aLoRA prefill)

    def apply(self, path: str, x: Tensor, out: Tensor) -> None:
        lr = self.layers.get(path)
        if lr is not None:
            _apply(lr, x, out, self.rows, self.tok)


class _AdapterSet:
    """The low-rank factors of several adapters concatenated along the rank axis, per layer.

    For adapters a_1 … a_k on a layer: A_cat = [A_1ᵀ … A_kᵀ] (in, Σ r_i) and SB_cat = [S_1B_1ᵀ; …] (Σ r_i, out);
    ``seg`` tells which adapter each of the Σ r_i columns belongs to. No rank is padded: each adapter keeps its own
    r_i columns. DoRA's g and c are stacked per adapter (row 0: the identity, for rows of other adapters).
    """

    def __init__(self, recs: list[ServedAdapter], device: torch.device, dtype: torch.dtype):
        self.layers: dict[str, tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]] = {}
        paths = sorted({p for rec in recs for p in rec.layers})
        for path in paths:
            parts = [(k, rec.layers[path]) for k, rec in enumerate(recs) if path in rec.layers]
            a = torch.cat([lr.a_t for _, lr in parts], dim=1)
            sb = torch.cat([lr.sb_t for _, lr in parts], dim=0)
            seg = torch.cat([torch.full((lr.rank,), k, dtype=torch.long, device=device) for k, lr in parts])
            g_stack = c_stack = None
            if any(lr.g is not None for _, lr in parts):
                n_out = sb.shape[1]
                g_stack = torch.ones(len(recs) + 1, n_out, dtype=dtype, device=device)
                for k, lr in parts:
                    if lr.g is not None:
                        g_stack[k + 1] = lr.g
            if any(lr.c is not None for _, lr in parts):  # DoRA on a layer with a bias
                c_stack = torch.zeros(len(recs) + 1, sb.shape[1], dtype=dtype, device=device)
                for k, lr in parts:
                    if lr.c is not None:
                        c_stack[k + 1] = lr.c
            self.layers[path] = (a, sb, seg, g_stack, c_stack)


class _Mixed:
    """Rows of several adapters in one call: per layer h = (x A_cat) ∘ M, out ← G ∘ out + C + h SB_cat.

    M (rows, Σ r) keeps each row's own adapter's columns (exact zeros elsewhere, so the sum is each row's own term);
    G, C are the rows' DoRA scale/offset (1, 0 for other rows). Three kernels per layer however many adapters.
    """

    def __init__(self, adapter_set: _AdapterSet, row_adapter: Tensor, dtype: torch.dtype):
        self.plans: dict[str, tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]] = {}
        for path, (a, sb, seg, g_stack, c_stack) in adapter_set.layers.items():
            mask = (row_adapter[:, None] == seg[None, :]).to(dtype)  # (B, Σr)
            g = None if g_stack is None else g_stack[row_adapter + 1][:, None, :]
            c = None if c_stack is None else c_stack[row_adapter + 1][:, None, :]
            self.plans[path] = (a, sb, mask, g, c)

    def apply(self, path: str, x: Tensor, out: Tensor) -> None:
        plan = self.plans.get(path)
        if plan is None:
            return
        a, sb, mask, g, c = plan
        n_in, n_out = x.shape[-1], out.shape[-1]
        h = (x.reshape(-1, n_in) @ a).mul_(mask)
        if g is not None:
            out.mul_(g)
        if c is not None:
            out.add_(c)
        out.view(-1, n_out).addmm_(h, sb)


class Engine:
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
            p: (m.base_layer if hasattr(m, "base_layer") else m) for p, m in adaptable_layers(model).items()
        }
        self._groups: list[Any] | None = None
        self._set_key: tuple | None = None
        self._set: _AdapterSet | None = None
        self._mixed_key: tuple | None = None
        self._mixed: _Mixed | None = None
        self._hooks = [m.register_forward_hook(self._make_hook(p)) for p, m in self.linears.items()]
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
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
        self._running: list[_Row] = []
        self._solo: list[_Row] = []
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
    # adapters
    def model_ids(self) -> list[str]:
        return [self.base_id, *sorted(set(self.adapters) | set(self.known))]

    def set_adapter_dir(self, path: str | Path | None) -> None:
        self.adapter_dir = None if path is None else Path(path).expanduser().resolve()
        if self.adapter_dir is not None:
            if not self.adapter_dir.is_dir():
                raise EngineError(f"--adapter-dir {path}: not a directory", 400)
            for sub in sorted(self.adapter_dir.iterdir()):
                if (sub / "adapter_config.json").is_file():
                    self.known.setdefault(sub.name, sub)

    def check_path(self, path: str | Path) -> Path:
        """The resolved adapter folder, or an EngineError naming why it cannot be loaded."""
        p = Path(path).expanduser()
        try:
            resolved = p.resolve()
        except OSError as exc:
            raise EngineError(f"lora_path {str(path)!r}: {exc}", 400, "lora_path") from exc
        if self.adapter_dir is not None and not resolved.is_relative_to(self.adapter_dir):
            raise EngineError(
                f"lora_path {str(path)!r} is outside --adapter-dir {self.adapter_dir}; only adapters under it "
                "can be loaded",
                400,
                "lora_path",
            )
        if not resolved.exists():
            raise EngineError(f"lora_path {str(path)!r}: no such directory", 400, "lora_path")
        if not (resolved / "adapter_config.json").is_file():
            raise EngineError(
                f"lora_path {str(path)!r}: not an adapter folder (adapter_config.json missing)", 400, "lora_path"
            )
        return resolved

    def load(self, name: str, path: str | Path, check_base: bool = True) -> ServedAdapter:
        """Load the adapter folder ``path`` as ``name``. On any error nothing changes (EngineError 400/409)."""
        if not name or name == self.base_id:
            raise EngineError(f"lora_name {name!r} is empty or the base model's id", 400, "lora_name")
        if name in self.adapters and not self.adapters[name].removing:
            raise EngineError(f"an adapter named {name!r} is already loaded; unload it first", 409, "lora_name")
        resolved = self.check_path(path)
        if check_base:
            from lorafam.commands._generation import AdapterMismatchError, check_adapter_base

            try:
                check_adapter_base(resolved, self.model, None)
            except AdapterMismatchError as exc:
                raise EngineError(str(exc), 400, "lora_path") from exc
        return self._call(lambda: self._load_now(name, resolved))

    def _load_now(self, name: str, resolved: Path) -> ServedAdapter:
        if name in self.adapters and not self.adapters[name].removing:
            raise EngineError(f"an adapter named {name!r} is already loaded; unload it first", 409, "lora_name")
        self._unmerge()  # DoRA's norm is taken on the original base weights
        try:
            built = build_adapters(self.linears, resolved)
            layers = export_adapter(built, self.linears)
        except (FileNotFoundError, ValueError, KeyError, TypeError, NotImplementedError, RuntimeError) as exc:
            if self.metrics:
                self.metrics.loads.labels("error").inc()
            raise EngineError(f"cannot load adapter {name!r} from {resolved}: {exc}", 400, "lora_path") from exc
        return self._install(name, resolved, built, layers)

    def _install(
        self, name: str, path: Path, built: BuiltAdapter, layers: dict[str, LowRank] | None
    ) -> ServedAdapter:
        if name in self.adapters and not self.adapters[name].removing:
            raise EngineError(f"an adapter named {name!r} is already loaded; unload it first", 409, "lora_name")
        if name in self.adapters:  # removing, still in flight: cannot reuse the name yet
            raise EngineError(f"adapter {name!r} is still finishing requests; retry", 409, "lora_name")
        self._evict_for_one()
        cfg = built.config
        method = cfg.method
        if method == "lora" and getattr(cfg, "use_rslora", False):
            method = "rslora"
        if getattr(cfg, "quantize", None):
            method = "qlora"
        self._generation += 1
        rec = ServedAdapter(
            name=name,
            path=str(path),
            method=method,
            rank=int(getattr(cfg, "rank", 0) or 0),
            config=cfg,
            invocation=list(cfg.invocation_tokens) if getattr(cfg, "invocation_tokens", None) else None,
            chat_template=built.chat_template,
            created=int(time.time()),
            generation=self._generation,
        )
        if layers is None:
            self._attach_solo(name, built)
            rec.solo = True
        else:
            rec.layers = layers
        self.adapters[name] = rec
        self.known.setdefault(name, path)
        if self.metrics:
            self.metrics.loads.labels("ok").inc()
            self.metrics.loaded.set(len(self.adapters))
        return rec

    def _attach_solo(self, name: str, built: BuiltAdapter) -> None:
        from lorafam.core.checkpoint import WEIGHTS_NAME, load_adapter_state
        from lorafam.core.inject import adapted_layers, attach

        self._unmerge()
        attach(self.model, built.config, name=name, trainable=False)
        try:
            load_adapter_state(self.model, built.state, name, source=WEIGHTS_NAME)
        except Exception:
            _detach(self.model, name)
            raise
        for _, layer in adapted_layers(self.model):
            layer.active = []

    def _evict_for_one(self) -> None:
        limit = self.cfg.max_loaded
        if limit is None:
            return
        while len(self.adapters) >= limit:
            victim = next((a for a in self.adapters.values() if a.in_flight == 0), None)
            if victim is None:
                raise EngineError(
                    f"all {limit} loaded adapters (--max-loaded) are serving requests; retry shortly",
                    503,
                    retry_after=1,
                )
            self._remove(victim)
            if self.metrics:
                self.metrics.evictions.inc()

    def unload(self, name: str) -> None:
        """Unload ``name`` (after its running requests finish). EngineError 404 when it is not loaded."""

        def op() -> None:
            rec = self.adapters.get(name)
            if rec is None or rec.removing:
                raise EngineError(
                    f"no adapter named {name!r} is loaded; loaded: {sorted(self.adapters)}", 404, "lora_name"
                )
            rec.removing = True
            if rec.in_flight == 0:
                self._remove(rec)
            if self.adapter_dir is None or not Path(rec.path).is_relative_to(self.adapter_dir):
                self.known.pop(name, None)

        self._call(op)

    def _remove(self, rec: ServedAdapter) -> None:
        if self._merged is rec:
            self._unmerge()
        if rec.solo:
            _detach(self.model, rec.name)
        self.adapters.pop(rec.name, None)
        self.prefix.drop_namespace(rec.namespace)
        self._set_key = self._set = self._mixed_key = self._mixed = None
        if self.metrics:
            self.metrics.loaded.set(len(self.adapters))

    def resolve(self, model: str) -> ServedAdapter | None:
        """The adapter a request's ``model`` names (None: the base); loads from --adapter-dir on demand."""
        if model == self.base_id:
            return None
        rec = self.adapters.get(model)
        if rec is not None and not rec.removing:
            return rec
        if model in self.known and rec is None:
            path = self.check_path(self.known[model])
            from lorafam.commands._generation import AdapterMismatchError, check_adapter_base

            try:
                check_adapter_base(path, self.model, None)
            except AdapterMismatchError as exc:
                raise EngineError(str(exc), 400, "model") from exc

            def get_or_load() -> ServedAdapter:
                loaded = self.adapters.get(model)  # a concurrent request may have loaded it meanwhile
                if loaded is not None and not loaded.removing:
                    return loaded
                return self._load_now(model, path)

            return self._call(get_or_load)
        raise EngineError(
            f"The model `{model}` does not exist. Available: {', '.join(self.model_ids())}", 404, "model"
        )

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
            row = _Row(req=req, adapter=rec, ids=list(req.prompt_ids))
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

    # --- merge policy --------------------------------------------------------------------------------------------
    def _merge_policy(self) -> None:
        if not self.cfg.merge_hot:
            return
        wanted = {r.model_name for r in self._running + self._solo}
        with self._waiting.mutex:
            wanted |= {r.model for r in self._waiting.queue}
        single = self.adapters.get(next(iter(wanted))) if len(wanted) == 1 else None
        if single is None or not single.mergeable or single.removing:
            self._single_steps = 0
            if self._merged is not None and wanted and wanted != {self._merged.name}:
                self._unmerge()
            return
        self._single_steps += 1
        if self._merged is None and self._single_steps >= self.cfg.merge_after:
            self._merge(single)

    def _merge(self, rec: ServedAdapter) -> None:
        if any(type(self.linears[p]) is not nn.Linear for p in rec.layers):
            return
        for p, lr in rec.layers.items():
            mod = self.linears[p]
            self._merged_orig[p] = mod.weight
            mod.weight = nn.Parameter(lr.merged_weight(mod.weight.detach()), requires_grad=False)
        self._merged = rec
        self.stats["merges"] += 1
        if self.metrics:
            self.metrics.merges.inc()

    def _unmerge(self) -> None:
        if self._merged is None:
            return
        for p, w in self._merged_orig.items():
            self.linears[p].weight = w
        self._merged_orig = {}
        self._merged = None
        self.stats["unmerges"] += 1
        if self.metrics:
            self.metrics.unmerges.inc()

    # --- forward helpers -----------------------------------------------------------------------------------------
    def _make_hook(self, path: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
            groups = self._groups
            if not groups:
                return None
            x = args[0]
            for g in groups:
                g.apply(path, x, out)
            return out

        return hook

    def _forward(self, ids: Tensor, view: SlotView, groups: list[_Group], all_logits: bool) -> Tensor:
        from lorafam.core.inject import adapted_layers

        cfg = self.model.config
        previous = cfg._attn_implementation
        cfg._attn_implementation = ATTN_NAME
        self._groups = groups
        solo_layers = [layer for _, layer in adapted_layers(self.model)] if self._solo_attached() else []
        saved = [layer.active for layer in solo_layers]
        for layer in solo_layers:
            layer.active = []
        try:
            kwargs: dict[str, Any] = {} if all_logits else {"logits_to_keep": 1}
            out = self.model(
                input_ids=ids.to(self.device),
                position_ids=view.positions(),
                attention_mask=view.mask(),
                cache=view,
                use_cache=True,
                **kwargs,
            )
        finally:
            self._groups = None
            cfg._attn_implementation = previous
            for layer, a in zip(solo_layers, saved):
                layer.active = a
        view.commit()
        return out.logits

    def _solo_attached(self) -> bool:
        return any(a.solo for a in self.adapters.values())

    def _row_group(self, row: _Row, rows: Tensor | None, tok: int) -> _Group | None:
        rec = row.adapter
        if rec is None or rec is self._merged:
            return None
        if rec.invocation is not None and row.start is None:
            return None  # an aLoRA row without its invocation is the base model
        return _Group(rec.layers, rows, tok)

    # --- prefill -------------------------------------------------------------------------------------------------
    def _namespace(self, row: _Row) -> tuple[str, int, bool]:
        """(namespace, reusable limit, may write) for a row's prompt."""
        rec, n = row.adapter, len(row.ids)
        if rec is None:
            return "base", n - 1, True
        if rec.invocation is not None:
            from lorafam.methods.alora import last_occurrence

            start = int(last_occurrence(torch.tensor([row.ids]), torch.tensor(rec.invocation))[0])
            row.start = start if start >= 0 else None
            return "base", min(n - 1, start) if start >= 0 else n - 1, False  # aLoRA never writes the cache
        return rec.namespace, n - 1, True

    def _prefill(self, row: _Row) -> None:
        req = row.req
        ns, limit, _ = self._namespace(row)
        if req.prompt_logprobs is not None or not req.use_prefix_cache:
            limit = 0  # every prompt position's logits are needed / asked not to reuse
        blocks = self.prefix.lookup(ns, row.ids, limit) if limit > 0 else []
        row.reused = len(blocks) * self.prefix.block
        row.slot = self.kv.add_row()
        if blocks:
            self.kv.write_prefix(row.slot, blocks, self.prefix.block)
        feed = row.ids[row.reused :]
        view = SlotView(self.kv, row.slot, 1, len(feed))
        tok = 0
        if row.start is not None:
            tok = max(0, row.start - row.reused)
        group = self._row_group(row, None, tok)
        logits = self._forward(
            torch.tensor([feed]), view, [group] if group else [], req.prompt_logprobs is not None
        )
        if req.prompt_logprobs is not None:
            row.prompt_lp = self._prompt_logprobs(logits[0].float(), row.ids, req.prompt_logprobs)
        self._running.append(row)
        if self.metrics:
            self.metrics.prompt_tokens.inc(len(row.ids))
            self.metrics.reused_tokens.inc(row.reused)
            self.metrics.prefix_hits.inc(len(blocks))
        self._accept(row, logits[0, -1].float())

    def _prompt_logprobs(self, logits: Tensor, ids: list[int], k: int) -> list[Any]:
        lp = torch.log_softmax(logits, dim=-1)  # (n, V): position i predicts token i + 1
        out: list[Any] = [None]
        for i in range(1, len(ids)):
            out.append(self._lp_entry(lp[i - 1], ids[i], k))
        return out

    def _lp_entry(self, lp: Tensor, token: int, k: int) -> dict[str, Any]:
        top = {}
        if k > 0:
            vals, idx = torch.topk(lp, k)
            top = {int(i): float(v) for v, i in zip(vals, idx)}
        return {"token": token, "logprob": float(lp[token]), "top": top}

    # --- decode --------------------------------------------------------------------------------------------------
    def _decode(self) -> None:
        rows = self._running
        n = len(rows)
        t0 = time.perf_counter()
        ids = torch.tensor([[r.new[-1]] for r in rows])
        view = SlotView(self.kv, 0, n, 1)
        logits = self._forward(ids, view, self._decode_groups(rows), False)
        models = len({r.model_name for r in rows})
        self.stats["decode_steps"] += 1
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], n)
        self.stats["max_batch_models"] = max(self.stats["max_batch_models"], models)
        for i, r in enumerate(list(rows)):
            self._accept(r, logits[i, -1].float())
        dt = time.perf_counter() - t0
        self.step_log.append((n, models, dt))
        if self.metrics:
            self.metrics.observe_step(n, models, dt)

    def _decode_groups(self, rows: list[_Row]) -> list[Any]:
        """What adds the adapters' terms in a decode step (cached while the batch's composition stays)."""
        adapted = [r.adapter if self._row_group(r, None, 0) is not None else None for r in rows]
        recs = list(dict.fromkeys(a for a in adapted if a is not None))
        if not recs:
            return []
        if len(recs) == 1 and all(a is not None for a in adapted):
            return [_Group(recs[0].layers, None, 0)]
        key = tuple((rec.name, rec.generation) for rec in recs)
        if self._set_key != key:
            self._set = _AdapterSet(recs, self.device, self.dtype)
            self._set_key, self._mixed_key = key, None
        index = {id(rec): k for k, rec in enumerate(recs)}
        comp = tuple(-1 if a is None else index[id(a)] for a in adapted)
        if self._mixed_key != comp:
            self._mixed = _Mixed(self._set, torch.tensor(comp, device=self.device), self.dtype)
            self._mixed_key = comp
        return [self._mixed]

    # --- solo rows (members without a low-rank form) ---------------------------------------------------------------
    def _prefill_solo(self, row: _Row) -> None:
        from transformers.cache_utils import DynamicCache

        from lorafam.core.inject import active_adapters

        row.solo_cache = DynamicCache()
        with active_adapters(self.model, [row.adapter.name]):
            out = self.model(
                input_ids=torch.tensor([row.ids], device=self.device), cache=row.solo_cache, use_cache=True
            )
        if row.req.prompt_logprobs is not None:
            row.prompt_lp = self._prompt_logprobs(out.logits[0].float(), row.ids, row.req.prompt_logprobs)
        self._solo.append(row)
        if self.metrics:
            self.metrics.prompt_tokens.inc(len(row.ids))
        self._accept(row, out.logits[0, -1].float())

    def _step_solo(self, row: _Row) -> None:
        from lorafam.core.inject import active_adapters

        if row.finish is not None:
            return
        with active_adapters(self.model, [row.adapter.name]):
            out = self.model(
                input_ids=torch.tensor([[row.new[-1]]], device=self.device),
                cache=row.solo_cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self._accept(row, out.logits[0, -1].float())

    # --- sampling, text, finishing -------------------------------------------------------------------------------
    def _accept(self, row: _Row, logits: Tensor) -> None:
        req = row.req
        tok = _pick(logits, req.temperature, req.top_p, row.gen)
        now = time.perf_counter()
        if row.first_token_at is None:
            row.first_token_at = now
            if self.metrics:
                self.metrics.ttft.observe(now - req.submitted)
        row.new.append(tok)
        lp = None
        if req.logprobs is not None:
            lp = self._lp_entry(torch.log_softmax(logits, -1), tok, req.logprobs)
            row.gen_lp.append(lp)
        if self.metrics:
            self.metrics.generated_tokens.inc()
        finish = None
        if tok in self.eos and not req.ignore_eos:
            finish = "stop"
        elif len(row.new) >= req.max_tokens:
            finish = "length"
        self._emit_text(row, finish)
        if req.cancelled and row.finish is None:
            row.finish = "abort"
        if row.finish is not None:
            self._finish(row)

    def _emit_text(self, row: _Row, finish: str | None) -> None:
        req = row.req
        ids = [t for t in row.new if t not in self.eos] if not req.ignore_eos else row.new
        text = self.tok.decode(ids, skip_special_tokens=True)
        stop_at = None
        if req.stop:
            lo = max(0, row.emitted - max(len(s) for s in req.stop))
            hits = [i for i in (text.find(s, lo) for s in req.stop) if i >= 0]
            if hits:
                stop_at = min(hits)
        if stop_at is not None:
            text, finish = text[:stop_at], "stop"
        if finish is None:
            safe = len(text) - (max(len(s) for s in req.stop) - 1 if req.stop else 0)
            while safe > row.emitted and text[safe - 1] == "\ufffd":  # an unfinished multi-byte character
                safe -= 1
        else:
            safe = len(text)
        delta = text[row.emitted : safe] if safe > row.emitted else ""
        lp = [row.gen_lp[-1]] if req.logprobs is not None and row.gen_lp else None
        if delta or finish is None or lp:
            row.req.on_event("text", {"delta": delta, "token_ids": [row.new[-1]], "logprobs": lp})
        row.emitted = max(row.emitted, safe)
        row.text = text
        if finish is not None:
            row.finish = finish

    def _finish(self, row: _Row) -> None:
        req = row.req
        if row in self._running:
            self._write_back(row)
            self._free_slot(row)
            self._running.remove(row)
        elif row in self._solo:
            self._solo.remove(row)
            row.solo_cache = None
        self._release(req)
        ttft = (row.first_token_at or time.perf_counter()) - req.submitted
        total = time.perf_counter() - req.submitted
        if row.finish != "abort":
            req.on_event(
                "done",
                {
                    "finish_reason": row.finish,
                    "prompt_tokens": len(row.ids),
                    "completion_tokens": len(row.new),
                    "cached_tokens": row.reused,
                    "ttft_s": ttft,
                    "total_s": total,
                    "prompt_logprobs": row.prompt_lp,
                    "prompt_ids": list(row.ids),
                    "text": row.text,
                },
            )
        if self.metrics:
            self.metrics.requests.labels(row.finish or "unknown").inc()

    def _write_back(self, row: _Row) -> None:
        """Put the whole blocks of prompt + generated tokens into the shared cache (aLoRA rows never write)."""
        ns, _, may_write = self._namespace(row)
        if not may_write or row.slot < 0:
            return
        seq = row.ids + row.new
        n = self.kv.lengths[row.slot]
        added = self.prefix.insert(
            ns, seq, n, lambda start: self.kv.read_block(row.slot, start, self.prefix.block)
        )
        self.stats["prefix_writes"] += added
        if self.metrics:
            self.metrics.prefix_writes.inc(added)
            self.metrics.prefix_blocks.set(len(self.prefix))

    def _free_slot(self, row: _Row) -> None:
        moved = self.kv.remove_row(row.slot)
        if moved is not None:
            for other in self._running:
                if other.slot == moved:
                    other.slot = row.slot
        row.slot = -1

    def _release(self, req: GenRequest) -> None:
        rec = self.adapters.get(req.model)
        if rec is not None:
            with self._lock:
                rec.in_flight -= 1
            if rec.removing and rec.in_flight <= 0:
                self._remove(rec)

    def _fail(self, row: _Row, message: str) -> None:
        self._release(row.req)
        row.req.on_event("error", {"message": message, "status": 500})


def _apply(lr: LowRank, x: Tensor, out: Tensor, rows: Tensor | None, tok: int) -> None:
    """out ← g ∘ out + c + (x Aᵀ)(S Bᵀ) on the given rows (all when None) from token ``tok`` on, in place."""
    n_in, n_out = x.shape[-1], out.shape[-1]
    if rows is None:
        xs, o = (x, out) if tok == 0 else (x[:, tok:], out[:, tok:])
        h = xs.reshape(-1, n_in) @ lr.a_t
        if lr.g is not None:
            o.mul_(lr.g)
            if lr.c is not None:
                o.add_(lr.c)
        if o.is_contiguous():
            o.view(-1, n_out).addmm_(h, lr.sb_t)
        else:
            o.add_((h @ lr.sb_t).view(o.shape))
        return
    xs = x.index_select(0, rows)
    d = ((xs.reshape(-1, n_in) @ lr.a_t) @ lr.sb_t).view(xs.shape[:-1] + (n_out,))
    if lr.g is None:
        out.index_add_(0, rows, d)
        return
    sub = out.index_select(0, rows).mul_(lr.g)
    if lr.c is not None:
        sub.add_(lr.c)
    out.index_copy_(0, rows, sub.add_(d))


def _pick(logits: Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    scores = logits / temperature
    probs = torch.softmax(scores, -1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, -1) - sorted_p < top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


def _detach(model: nn.Module, name: str) -> None:
    """Remove the attached (solo) adapter ``name`` from ``model``; the others stay as they are."""
    from lorafam.core.inject import detach

    detach(model, name)
