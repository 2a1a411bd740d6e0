"""Generation helpers shared by ``generate``, ``chat`` and ``quickstart``: load a base (+ adapter), decode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lorafam.serve.chat_format import chat_prompt
from lorafam.serve.folders import AdapterMismatchError, check_adapter_base

__all__ = [
    "AdapterMismatchError",
    "Sampling",
    "add_sampling_arguments",
    "chat_prompt",
    "check_adapter_base",
    "generate_batch",
    "load_for_inference",
    "sampling_from_args",
    "stream",
]


@dataclass
class Sampling:
    """Decoding settings of ``generate`` / ``chat``; applied by transformers' own logits processors
    (temperature, top-k, top-p warpers, the repetition-penalty processor) and stop-string criteria."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {self.top_k}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ValueError(f"--repetition-penalty must be > 0, got {self.repetition_penalty}")
        if self.temperature == 0 and (self.top_p is not None or self.top_k is not None):
            raise ValueError("--top-p / --top-k apply to sampling: set --temperature > 0 as well")

    def generate_kwargs(self, tok: Any) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (which builds the matching logits processors)."""
        sample = self.temperature > 0
        kw: dict[str, Any] = {
            "do_sample": sample,
            "temperature": self.temperature if sample else None,
            "top_p": self.top_p if sample else None,
            "top_k": self.top_k if sample else None,
            "pad_token_id": tok.pad_token_id,
        }
        if self.repetition_penalty is not None:
            kw["repetition_penalty"] = self.repetition_penalty
        if self.stop:
            kw["stop_strings"] = list(self.stop)
            kw["tokenizer"] = tok
        if self.seed is not None:
            torch.manual_seed(self.seed)
        return kw

    def cut(self, text: str) -> str:
        """``text`` up to (not including) the first stop string."""
        for s in self.stop:
            i = text.find(s)
            if i >= 0:
                text = text[:i]
        return text


def add_sampling_arguments(p: Any) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the top tokens of mass P")
    p.add_argument("--top-k", type=int, default=None, help="sample among the K most likely tokens")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeats (CTRL's rule)")
    p.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible outputs)")


def sampling_from_args(args: Any) -> Sampling:
    return Sampling(args.temperature, args.top_p, args.top_k, args.repetition_penalty, list(args.stop), args.seed)


def load_for_inference(
    model_name: str | None,
    adapter: str | None,
    ignore_mismatch: bool = False,
    device: str | None = None,
) -> tuple[nn.Module, Any]:
    """The base model (+ adapter when given) in eval mode, and its tokenizer."""
    import lorafam as lf

    model = lf.load_model(model_name, device=device)
    tok = lf.load_tokenizer(model_name)
    if adapter:
        if not ignore_mismatch:
            check_adapter_base(adapter, model, model_name)
        lf.load_adapter(model, adapter)
    return model.eval(), tok


@torch.no_grad()
def generate_batch(
    model: nn.Module,
    tok: Any,
    prompts: list[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 16,
    sampling: Sampling | None = None,
) -> list[str]:
    """Greedy (or sampled) completions of already-rendered prompts, batched with left padding."""
    from lorafam.decoding import greedy_batch

    sampling = sampling or Sampling(temperature=temperature)
    kwargs = sampling.generate_kwargs(tok)
    pad_id = kwargs.pop("pad_token_id")
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    new = greedy_batch(model, ids, pad_id=pad_id, max_new_tokens=max_new_tokens, batch_size=batch_size, **kwargs)
    return [sampling.cut(t).strip() for t in tok.batch_decode(new, skip_special_tokens=True)]


def stream(
    model: nn.Module,
    tok: Any,
    prompt: str,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    sampling: Sampling | None = None,
) -> str:
    """Decode one prompt, printing tokens to the terminal as they come; returns the text (cut at a stop string)."""
    from transformers import TextStreamer

    sampling = sampling or Sampling(temperature=temperature)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(next(model.parameters()).device)
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, streamer=streamer, **sampling.generate_kwargs(tok))
    return sampling.cut(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
