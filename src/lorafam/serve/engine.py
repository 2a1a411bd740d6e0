"""Inference engine: greedy/sampled decoding with a shared, read-only base-model prefix cache.

A :class:`PrefixCache` prefills a shared history once with the *base* model (adapters off) and keeps the keys and
values of every layer. Each :func:`generate` call on top of it gets its own cache *view*: a fresh
``transformers.DynamicCache`` whose layers point at slices of the shared tensors (no copy). transformers'
``DynamicLayer.update`` grows a layer by ``torch.cat`` into a new tensor and rebinds it, so the call's own tokens
never write into the shared tensors; no per-call deep copy is made either.

What is reused depends on who runs (decided per call, see :func:`reusable_prefix`):

- the base model: the whole common prefix of the history and the prompt;
- aLoRA adapters: the common prefix up to the start t* of the last invocation (tokens before t* have exactly the
  base model's K/V, so the cache is valid for them; the invocation and what follows are computed with the adapter);
- any other member (LoRA, DoRA, ...): nothing — those change the K/V of every token, so the history is re-prefilled.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache, DynamicLayer

from lorafam.core.inject import active_adapters, configs, disabled
from lorafam.decoding import kv_cache_view
from lorafam.serve.fastpath import SharedPrefixLayer, fast_inference


def _encode(tokenizer: Any, prompt: str | Tensor | list[int]) -> Tensor:
    """Prompt → (1, L) long tensor on CPU."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer; pass token ids or a tokenizer")
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    elif isinstance(prompt, Tensor):
        ids = prompt
    else:
        ids = torch.tensor(list(prompt), dtype=torch.long)
    ids = ids.to(torch.long).cpu()
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"prompt: expected one sequence of token ids, got shape {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise ValueError("prompt: empty")
    return ids


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class PrefixCache:
    """The base model's keys/values for a shared history, computed once and never written again.

    Args:
        model: the (adapted or plain) causal LM; the history is prefilled with every adapter off.
        history: text (needs ``tokenizer``) or token ids.
        tokenizer: used for text histories.

    Attributes:
        ids: the history's token ids, (1, H).
        keys / values: one (1, kv_heads, H, head_dim) tensor per layer.
    """

    def __init__(self, model: nn.Module, history: str | Tensor | list[int], tokenizer: Any = None):
        self.ids = _encode(tokenizer, history)
        self._model_id = id(model)
        cache = DynamicCache()
        with torch.no_grad(), disabled(model):
            model(input_ids=self.ids.to(_device(model)), cache=cache, use_cache=True, **_keep_last(model))
        for i, layer in enumerate(cache.layers):
            if type(layer) is not DynamicLayer:
                raise NotImplementedError(
                    f"PrefixCache: layer {i} uses {type(layer).__name__}; only full-attention layers "
                    "(DynamicLayer) can be shared read-only"
                )
        self.keys: tuple[Tensor, ...] = tuple(layer.keys for layer in cache.layers)
        self.values: tuple[Tensor, ...] = tuple(layer.values for layer in cache.layers)

    def __len__(self) -> int:
        return self.ids.shape[1]

    def view(self, upto: int | None = None, shared: bool = False) -> DynamicCache:
        """A new cache holding the first ``upto`` history tokens (all by default) as slices — no copy.

        With ``shared=False`` the layers are plain ``DynamicLayer`` s: the first update concatenates the prefix
        with the new tokens into a new tensor (the shared tensors are never written). ``shared=True`` keeps the
        prefix apart (:class:`~lorafam.serve.fastpath.SharedPrefixLayer`); it needs lorafam's attention function,
        i.e. a call inside :func:`~lorafam.serve.fastpath.fast_inference`.
        """
        upto = len(self) if upto is None else upto
        if not 0 <= upto <= len(self):
            raise ValueError(f"PrefixCache.view: upto={upto} outside [0, {len(self)}]")
        if not shared:
            return kv_cache_view(self.keys, self.values, upto)
        view = DynamicCache()
        for k, v in zip(self.keys, self.values):
            view.layers.append(SharedPrefixLayer(k[:, :, :upto], v[:, :, :upto]))
        return view

    def check_model(self, model: nn.Module) -> None:
        if id(model) != self._model_id:
            raise ValueError("this PrefixCache was built with another model; build one per model")

    def extend(self, model: nn.Module, more: str | Tensor | list[int], tokenizer: Any = None) -> PrefixCache:
        """A new PrefixCache for history + ``more`` (only the new tokens are computed, with the base model)."""
        self.check_model(model)
        add = _encode(tokenizer, more)
        view = self.view()
        with torch.no_grad(), disabled(model):
            model(input_ids=add.to(_device(model)), cache=view, use_cache=True, **_keep_last(model))
        new = PrefixCache.__new__(PrefixCache)
        new.ids, new._model_id = torch.cat([self.ids, add], dim=1), self._model_id
        new.keys = tuple(layer.keys for layer in view.layers)
        new.values = tuple(layer.values for layer in view.layers)
        return new


def _keep_last(model: nn.Module) -> dict[str, Any]:
    """Ask for the last position's logits only when the model supports it (skips a huge lm_head matmul)."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def common_prefix(a: Tensor, b: Tensor) -> int:
    """Length of the common prefix of two (1, n) id tensors."""
    n = min(a.shape[1], b.shape[1])
    diff = (a[0, :n] != b[0, :n]).nonzero()
    return int(diff[0, 0]) if diff.numel() else n


def reusable_prefix(model: nn.Module, ids: Tensor, names: list[str], cache: PrefixCache | None) -> int:
    """How many leading tokens of ``ids`` can take their K/V from ``cache`` when ``names`` are active."""
    from lorafam.methods.alora import ALoraConfig, last_occurrence

    if cache is None:
        return 0
    reuse = min(common_prefix(cache.ids, ids), ids.shape[1] - 1)  # at least one token must be fed
    cfgs = configs(model)
    for name in names:
        cfg = cfgs[name]
        if not isinstance(cfg, ALoraConfig):
            return 0
        start = int(last_occurrence(ids, torch.tensor(cfg.invocation_tokens))[0])
        if start >= 0:
            reuse = min(reuse, start)
    return reuse


@dataclass
class GenerationResult:
    """What :func:`generate` returns."""

    ids: Tensor
    """Prompt + generated token ids, (1, L + n)."""
    new_ids: list[int]
    """The generated ids."""
    text: str | None
    """The generated text (None without a tokenizer)."""
    reused_tokens: int
    """Prompt tokens whose keys/values came from the shared cache."""
    prefilled_tokens: int
    """Prompt tokens computed in this call."""
    ttft_s: float
    """Seconds to the first generated token (cache view, prefill of the uncached tokens, pick)."""
    total_s: float
    first_logits: Tensor
    """Logits that chose the first token, (vocab,)."""


@contextlib.contextmanager
def _running(model: nn.Module, names: list[str]) -> Iterator[None]:
    if names:
        with active_adapters(model, names):
            yield
    else:
        with disabled(model):
            yield


def _names(model: nn.Module, adapter: str | list[str] | None) -> list[str]:
    if adapter is None:
        return []
    names = [adapter] if isinstance(adapter, str) else list(adapter)
    attached = configs(model)
    for n in names:
        if n not in attached:
            raise ValueError(f"adapter={n!r} is not attached to this model; attached: {sorted(attached)}")
    return names


def _pick(logits: Tensor, do_sample: bool, temperature: float, top_k: int | None, gen: Any) -> int:
    if not do_sample:
        return int(logits.argmax())
    scores = logits.float() / max(temperature, 1e-6)
    if top_k is not None:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(scores, -1), 1, generator=gen))


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Tensor | list[int],
    adapter: str | list[str] | None = None,
    cache: PrefixCache | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    eos_token_id: int | list[int] | None = None,
) -> GenerationResult:
    """Generate from ``prompt`` with the base model (``adapter=None``) or the named adapter(s).

    With ``cache`` (a :class:`PrefixCache` of a shared history), the prompt is the *full* sequence (history +
    new text); its leading tokens that the cache covers and the adapter allows (see :func:`reusable_prefix`) are
    not recomputed. The shared cache is never modified.

    Raises:
        ValueError: unknown adapter names, an empty prompt, a cache built for another model, bad sampling args.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    t0 = time.perf_counter()
    names = _names(model, adapter)
    if cache is not None:
        cache.check_model(model)
    ids = _encode(tokenizer, prompt)
    reuse = reusable_prefix(model, ids, names, cache)
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    device = _device(model)
    keep = _keep_last(model)
    new: list[int] = []
    with _running(model, names), fast_inference(model) as ours:
        kv = cache.view(reuse, shared=ours) if reuse > 0 else DynamicCache()
        out = model(input_ids=ids[:, reuse:].to(device), cache=kv, use_cache=True, **keep)
        first_logits = out.logits[0, -1].float().cpu()
        tok = _pick(first_logits, do_sample, temperature, top_k, gen)
        ttft = time.perf_counter() - t0
        new.append(tok)
        while len(new) < max_new_tokens and tok not in stop:
            out = model(input_ids=torch.tensor([[tok]], device=device), cache=kv, use_cache=True, **keep)
            tok = _pick(out.logits[0, -1].float().cpu(), do_sample, temperature, top_k, gen)
            new.append(tok)
    full = torch.cat([ids, torch.tensor([new], dtype=torch.long)], dim=1)
    text = tokenizer.decode(new, skip_special_tokens=True) if tokenizer is not None else None
    return GenerationResult(
        ids=full,
        new_ids=new,
        text=text,
        reused_tokens=reuse,
        prefilled_tokens=ids.shape[1] - reuse,
        ttft_s=ttft,
        total_s=time.perf_counter() - t0,
        first_logits=first_logits,
    )
