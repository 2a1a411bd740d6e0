"""aLoRA — Activated LoRA.

"Activated LoRA: Fine-tuned LLMs for Intrinsics", Greenewald, Lastras, Parnell, Shah, Popa, Zizzo, Gunasekara,
Rawat, Cox (IBM Research), 2025 — https://arxiv.org/abs/2504.12397

Update rule, for row b of a batch whose *last* occurrence of the invocation token sequence starts at t*_b
(paper §3; PEFT's ``ALoraLinearVariant`` implements the same rule):

    h_{b,t} = W0 x_{b,t} + s · B A dropout(x_{b,t})   if t ≥ t*_b
    h_{b,t} = W0 x_{b,t}                              if t < t*_b, or if the row has no invocation at all

with x (B, T, in), A ∈ R^{r×in}, B ∈ R^{out×r}, s = α/r (α/√r with rsLoRA). Under a causal mask every token before
t*_b therefore has exactly the base model's hidden states and keys/values, so a base-model KV cache of the shared
history can be reused as is (``lorafam.serve.engine``). Generated tokens come after t*_b and are always adapted.

How the per-token mask reaches the layers: :meth:`ALoraAdapter.on_attach` registers a forward pre-hook on the
model's decoder body (``model.base_model``; the model itself when it has none), so calls that skip the head (a
chunked loss) are seen too. Each call reads ``input_ids`` and the cache length P and finds the last complete
occurrence of the invocation inside the call's tokens (absolute start P + i). If the call has none, a call that
*continues* the previous one (same cache object, P equal to the previous call's end, same batch size) keeps the
previous start — this is what makes decoding steps after an invoked prompt adapted and decoding steps of an
un-invoked row base. Otherwise the row is base. An invocation split across two calls is not seen (feed it in one
call; the engine does). Calls with ``inputs_embeds`` only run as the base model, with a warning (as PEFT does).

Resolving an invocation *string* (:meth:`ALoraConfig.resolve`): the ids are ``tokenizer.encode(s,
add_special_tokens=False)`` (PEFT's recipe). Because BPE can merge the string's first/last characters with the
text around it, the string is also encoded inside a few probe contexts; if its ids do not appear there as a
contiguous run, resolution fails with an error naming ``invocation_string`` and showing both tokenisations —
pick a string that starts and ends at a token boundary (a special token at the start and a newline at the end,
as in ChatML's ``<|im_start|>assistant\\n``), or pass ``invocation_tokens`` yourself. The probes put the string
after "Hello world." / "Hello world.\\n" / nothing and before nothing / "The answer" / " The answer".
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lorafam.core.record import entry as record_entry
from lorafam.core.record import record
from lorafam.methods.lora import LoraAdapter, LoraConfig

NEVER = 2**62
"""Activation start for rows without the invocation (no position reaches it)."""

PROBE_BEFORE = ("Hello world.", "Hello world.\n", "")
PROBE_AFTER = ("", "The answer", " The answer")


def last_occurrence(ids: Tensor, pattern: Tensor) -> Tensor:
    """Start index of the last complete occurrence of ``pattern`` (k,) in each row of ``ids`` (B, T); -1 if none."""
    k = pattern.numel()
    batch, length = ids.shape
    if length < k:
        return torch.full((batch,), -1, dtype=torch.long, device=ids.device)
    windows = ids.unfold(1, k, 1)  # (B, T-k+1, k)
    hits = (windows == pattern.to(ids.device)).all(dim=-1)  # (B, T-k+1)
    idx = torch.arange(hits.shape[1], device=ids.device).expand_as(hits)
    return torch.where(hits, idx, torch.full_like(idx, -1)).max(dim=1).values


def in_context_mismatch(tokenizer: Any, string: str, tokens: list[int]) -> tuple[str, list[int]] | None:
    """The first probe text in which ``string`` does not tokenise to ``tokens`` (as a contiguous run), or None."""
    for before in PROBE_BEFORE:
        for after in PROBE_AFTER:
            text = before + string + after
            ids = tokenizer.encode(text, add_special_tokens=False)
            found = last_occurrence(torch.tensor([ids]), torch.tensor(tokens)) if ids else torch.tensor([-1])
            if int(found[0]) < 0:
                return text, list(ids)
    return None


@dataclass(kw_only=True)
class ALoraConfig(LoraConfig):
    """Activated LoRA: a LoRA that acts only from the last occurrence of an invocation sequence onward.

    Args:
        invocation_tokens: token ids of the invocation sequence (PEFT's ``alora_invocation_tokens``).
        invocation_string: alternatively, a string resolved with :meth:`resolve` (``tokenizer`` required).
    """

    method: ClassVar[str] = "alora"

    invocation_tokens: list[int] = field(default_factory=list)
    """Token ids whose last occurrence switches the adapter on (required before attaching)."""
    invocation_string: str | None = None
    """Human-readable invocation; turned into ``invocation_tokens`` by :meth:`resolve`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        toks = self.invocation_tokens
        if not isinstance(toks, (list, tuple)) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in toks
        ):
            raise ValueError(
                f"ALoraConfig: 'invocation_tokens' must be a list of non-negative token ids, got {toks!r}"
            )
        self.invocation_tokens = [int(t) for t in toks]
        if self.invocation_string is not None and (
            not isinstance(self.invocation_string, str) or not self.invocation_string
        ):
            raise ValueError("ALoraConfig: 'invocation_string' must be a non-empty string or None")
        if not self.invocation_tokens and self.invocation_string is None:
            raise ValueError(
                "ALoraConfig: set 'invocation_tokens' (token ids) or 'invocation_string' (then call "
                ".resolve(tokenizer)); aLoRA needs an invocation sequence to know where to switch on"
            )

    def resolve(self, tokenizer: Any, check_context: bool = True) -> ALoraConfig:
        """A copy with ``invocation_tokens`` set from ``invocation_string`` (see the module docstring for the rule).

        Raises:
            ValueError: no string to resolve, tokens that disagree with the string, or a string that tokenises
                differently inside text (the message names ``invocation_string`` and shows both tokenisations).
        """
        if self.invocation_string is None:
            if self.invocation_tokens:
                return self
            raise ValueError("ALoraConfig: no 'invocation_string' to resolve")
        ids = list(tokenizer.encode(self.invocation_string, add_special_tokens=False))
        if not ids:
            raise ValueError(f"ALoraConfig: invocation_string={self.invocation_string!r} encodes to no tokens")
        if self.invocation_tokens and self.invocation_tokens != ids:
            raise ValueError(
                f"ALoraConfig: invocation_tokens={self.invocation_tokens} but invocation_string="
                f"{self.invocation_string!r} encodes to {ids} with this tokenizer"
            )
        if check_context:
            bad = in_context_mismatch(tokenizer, self.invocation_string, ids)
            if bad is not None:
                raise ValueError(
                    f"ALoraConfig: invocation_string={self.invocation_string!r} tokenises differently in context: "
                    f"alone it is {ids}, but inside {bad[0]!r} the ids are {bad[1]}, which do not contain it. "
                    "Start and end the string at a token boundary (e.g. '<|im_start|>assistant\\n' in a ChatML "
                    "template), or pass invocation_tokens explicitly (check_context=False skips this check)."
                )
        return dataclasses.replace(self, invocation_tokens=ids)

    @classmethod
    def run_fields(cls, chosen: dict[str, Any], run: Any) -> dict[str, Any]:
        """The prompt format's assistant header as the invocation, unless one is given."""
        if run.assistant_header and not chosen.get("invocation_tokens") and not chosen.get("invocation_string"):
            return {"invocation_tokens": list(run.assistant_header)}
        return {}

    @classmethod
    def from_string(cls, invocation_string: str, tokenizer: Any, **kwargs: Any) -> ALoraConfig:
        """``ALoraConfig(invocation_string=..., **kwargs).resolve(tokenizer)``."""
        return cls(invocation_string=invocation_string, **kwargs).resolve(tokenizer)

    # -- PEFT config <-> ours: a plain LORA config plus alora_invocation_tokens -------------------------------
    def packing_problem(self) -> str | None:
        return (
            "aLoRA activates from the last invocation in each row, so in a packed row only the last sample "
            "would be adapted (and earlier samples' invocations would switch it on for later ones)"
        )

    def to_peft(self) -> dict[str, Any]:
        out = super().to_peft()
        out["alora_invocation_tokens"] = list(self.invocation_tokens)
        return out

    @classmethod
    def accepts_peft(cls, d: dict[str, Any]) -> bool:
        return d.get("peft_type") == "LORA" and bool(d.get("alora_invocation_tokens")) and not d.get("use_dora")

    @classmethod
    def from_peft(cls, d: dict[str, Any], targets: Any) -> ALoraConfig:
        return cls(targets=targets, invocation_tokens=list(d["alora_invocation_tokens"]), **cls.peft_kwargs(d))


# ---------------------------------------------------------------------------------------------------------------
class ActivationState:
    """Where adapter ``name`` is on during the current forward call (shared by all its layers)."""

    def __init__(self, name: str, tokens: list[int]):
        self.name = name
        self.tokens = torch.tensor(tokens, dtype=torch.long)
        self.mode = "off"  # "off" | "on" | "mixed"
        self.mask: Tensor | None = None  # (B, T) bool, only in "mixed" mode
        self.starts: Tensor | None = None  # (B,) absolute activation start (NEVER: no invocation)
        self.end = 0
        self.cache_ref: weakref.ref | None = None
        self.warned = False

    def update(self, ids: Tensor | None, cache: Any) -> None:
        """Recompute the activation for a call on ``ids`` (B, T) on top of ``cache`` (None or a transformers Cache)."""
        if ids is None:
            if not self.warned:
                warnings.warn(
                    f"aLoRA adapter {self.name!r}: the call has no input_ids (inputs_embeds only), so the "
                    "invocation cannot be found; the adapter is off for this call.",
                    stacklevel=4,
                )
                self.warned = True
            self.mode, self.mask, self.starts, self.cache_ref = "off", None, None, None
            return
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        batch, length = ids.shape
        found = last_occurrence(ids, self.tokens)
        starts = torch.where(found >= 0, found + past, torch.full_like(found, NEVER))
        previous = self.cache_ref() if self.cache_ref is not None else None
        continuing = (
            cache is not None
            and previous is cache
            and self.end == past
            and self.starts is not None
            and self.starts.shape[0] == batch
        )
        if continuing:
            starts = torch.where(found >= 0, starts, self.starts.to(starts.device))
        self.starts, self.end = starts, past + length
        self.cache_ref = weakref.ref(cache) if cache is not None else None
        local = starts - past  # (B,) first adapted index inside this call
        if bool((local <= 0).all()):
            self.mode, self.mask = "on", None
        elif bool((local >= length).all()):
            self.mode, self.mask = "off", None
        else:
            self.mode = "mixed"
            self.mask = torch.arange(length, device=ids.device).unsqueeze(0) >= local.unsqueeze(1)


def _pre_hook(state: ActivationState, module: nn.Module, args: tuple, kwargs: dict) -> None:
    ids = kwargs.get("input_ids")
    if ids is None and args and isinstance(args[0], Tensor):
        ids = args[0]
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if ids is not None and ids.dim() == 1:
        ids = ids.unsqueeze(0)
    state.update(ids, cache)


def activation_states(model: nn.Module) -> dict[str, ActivationState]:
    """Adapter name → its :class:`ActivationState` for every aLoRA adapter on ``model`` (from the model record)."""
    rec = record(model)
    entries = rec.entries.items() if rec is not None else ()
    return {name: e.state["activation"] for name, e in entries if "activation" in e.state}


class ALoraAdapter(LoraAdapter):
    """aLoRA on one linear layer: s · B A dropout(x) on activated tokens, exactly 0 elsewhere.

    The activation comes from the model-level pre-hook (see the module docstring); the parameters, their roles and
    the PEFT tensor names are LoRA's.
    """

    mergeable: ClassVar[bool] = False
    not_mergeable_reason: ClassVar[str] = (
        "aLoRA adapts only the tokens from the invocation onward, so no single weight W0 + ΔW reproduces it; "
        "keep it unmerged (or serve it with lf.generate for base-cache reuse)"
    )

    activation: ActivationState | None = None

    def delta_output(self, x: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        state = self.activation
        if state is None or state.mode == "off":
            return base_out.new_zeros(())
        if state.mode == "on":
            return self.lora_path(x).to(base_out.dtype)
        mask = state.mask
        if x.shape[:-1] != mask.shape:
            raise RuntimeError(
                f"aLoRA: the layer input has token shape {tuple(x.shape[:-1])} but the model call had "
                f"{tuple(mask.shape)} tokens; was this layer called outside the model's forward?"
            )
        sel = mask.reshape(-1).nonzero().squeeze(1)
        flat = base_out.new_zeros(mask.numel(), base_out.shape[-1])
        picked = self.lora_path(x.reshape(-1, x.shape[-1]).index_select(0, sel)).to(base_out.dtype)
        return flat.index_copy(0, sel, picked).view_as(base_out)

    # -- model-level state -------------------------------------------------------------------------------------
    @classmethod
    def on_attach(cls, model: nn.Module, config: ALoraConfig, name: str) -> None:  # type: ignore[override]
        from lorafam.core.inject import adapted_layers

        if not config.invocation_tokens:
            raise ValueError(
                f"ALoraConfig for adapter {name!r}: 'invocation_tokens' is empty; call "
                f"config.resolve(tokenizer) to turn invocation_string={config.invocation_string!r} into ids"
            )
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        vocab = getattr(emb, "num_embeddings", None)
        if vocab is not None and max(config.invocation_tokens) >= vocab:
            raise ValueError(
                f"ALoraConfig: invocation_tokens {config.invocation_tokens} has ids outside the model's "
                f"vocabulary (size {vocab}); was it made with another tokenizer?"
            )
        state = ActivationState(name, config.invocation_tokens)
        # hook the decoder body (``base_model``): the top model calls it, and so do callers that skip the head
        # (the trainer's chunked loss runs ``model.base_model(...)`` directly)
        body = getattr(model, "base_model", None)
        target = body if isinstance(body, nn.Module) else model
        handle = target.register_forward_pre_hook(functools.partial(_pre_hook, state), with_kwargs=True)
        for _, layer in adapted_layers(model):
            if name in layer.adapters:
                layer.adapters[name].activation = state
        entry = record_entry(model, name)
        entry.state["activation"] = state
        entry.handles.append(handle)  # removed on detach
