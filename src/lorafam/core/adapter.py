"""The one abstraction for adapted layers.

An :class:`AdaptedLayer` *holds* the original base layer (never copies it) and a dict of named
:class:`Adapter` modules. Its forward is shared by every member: compute the base output once, then add each
active adapter's contribution ``delta_output(x, base_out)``. Members differ only in

- ``delta_weight()``  the dense ΔW in the base weight's (out, in) layout — the source of truth for merge/tests,
- ``delta_output()``  the forward rule (what to add to the base output),
- ``param_roles()``   which of the adapter's own parameters are ``a``, ``b``, ``magnitude``, ``gate``...,

plus, for non-additive members, ``merge_into`` / ``unmerge_from``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _nn_module

from lorafam.core.base_layer import (
    add_to_base_weight,
    base_bias,
    base_shape,
    base_weight,
    is_quantized,
    set_base_weight,
)
from lorafam.core.config import AdapterConfig


# ---------------------------------------------------------------------------------------------------------------
class Adapter(nn.Module):
    """One member's adapter on one base layer. Subclasses open with the paper and the update rule."""

    mergeable: ClassVar[bool] = True
    """False for members whose update cannot be folded into W (aLoRA); ``merge`` then raises."""
    not_mergeable_reason: ClassVar[str] = ""
    unshardable: ClassVar[str | None] = None
    """Why this adapter cannot run under FSDP2 (``fsdp: true``: every decoder block sharded on its own), or None."""

    def __init__(self, config: AdapterConfig, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.config = config
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.alpha = alpha

    # --- the member's rule -------------------------------------------------------------------------------------
    def delta_weight(self, base: nn.Module) -> Tensor:
        """Dense ΔW, shape (out, in), float32."""
        raise NotImplementedError

    def delta_output(self, x: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        """What this adapter adds to the base output for input x (..., in) → (..., out)."""
        raise NotImplementedError

    def reuses_prefix(self) -> bool:
        """Whether a KV cache of a prompt prefix computed in its own call serves every continuation unchanged.
        False when a layer's output at a position reads more than the tokens up to it (a sequence-level router)."""
        return True

    def param_roles(self) -> dict[str, str]:
        """Own parameter name → role ("a", "b", "magnitude", "gate", ...)."""
        raise NotImplementedError

    def add_output(self, x: Tensor, out: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        """The layer output with this adapter applied: ``out + delta_output(x, base_out, base)``.

        ``out`` is the running output (``base_out`` itself for the first active adapter). Members override this
        only to fuse the addition into their own kernels (LoRA's ``addmm``); the result must equal the default.
        """
        return out + self.delta_output(x, base_out, base)

    def add_output_(self, x: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        """:meth:`add_output` for the layer's only adapter on a plain ``nn.Linear`` base, whose fresh output
        ``base_out`` nothing else holds: a member may add into it in place where no autograd records the
        forward (LoRA's and DoRA's decoding). The result must equal ``add_output(x, base_out, base_out, base)``,
        which is the default."""
        return self.add_output(x, base_out, base_out, base)

    def decode_call(self, layer: AdaptedLayer, base: nn.Module) -> DecodeCall | None:
        """A function for ``layer``'s calls without autograd while this is its only active, unmerged adapter
        on a plain ``nn.Linear`` ``base``: ``f(layer, x)`` returns the layer's output, or ``None`` where it
        cannot (then the layer's ``forward`` runs). ``None`` (the default): no such function.

        The layer calls it from its ``__call__`` instead of running ``nn.Module.__call__``, ``forward`` and
        :meth:`add_output_` (a decoded token passes 210 adapted layers on SmolLM2, and on a slow CPU each of
        those Python frames costs microseconds). The layer itself checks its own state before each call (that
        it is the layer and the base ``f`` was built for, its active, merged and disabled state, hooks on it
        and on ``base``); ``f`` must check, on every call, everything else its result depends on that can change
        (parameter identity, storage and version; the scale; train/eval where dropout is active; inference
        mode; dtype), returning ``None`` after setting ``layer._decode_call = None`` when stale, and its output
        must equal :meth:`add_output_`'s. It must not hold ``layer`` itself: a reference cycle would keep a
        dropped model in memory until the garbage collector runs.
        """
        return None

    def clear_caches(self) -> None:
        """Forget every value derived from the parameters (decode copies, norms, circuit results), so the next
        forward computes them again. The caches follow in-place updates through version counters, but an edit
        through ``.data`` (``p.data.mul_(0)``, some third-party optimizers) bypasses those counters; after such an
        edit call :func:`lorafam.drop_caches`. Default: nothing is cached."""

    # --- merge (additive by default) ---------------------------------------------------------------------------
    def merge_into(self, base: nn.Module) -> None:
        add_to_base_weight(base, self.delta_weight(base))

    def unmerge_from(self, base: nn.Module) -> None:
        add_to_base_weight(base, -self.delta_weight(base))

    # --- checkpoint I/O in PEFT's key layout ------------------------------------------------------------------
    def peft_state(self) -> dict[str, Tensor]:
        """Key suffix (as PEFT writes it after the module path) → tensor."""
        raise NotImplementedError

    def load_peft_state(self, state: dict[str, Tensor], where: str) -> None:
        """Load tensors written by :meth:`peft_state` (or by PEFT); ``where`` names the module for errors."""
        own = self.peft_state()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"{where}: missing tensors {missing}, unexpected tensors {unexpected}")
        for key, target in own.items():
            src = state[key]
            if tuple(src.shape) != tuple(target.shape):
                raise ValueError(
                    f"{where}.{key}: shape {tuple(src.shape)} in the file but {tuple(target.shape)} in the "
                    "model — was this adapter trained on a different base model?"
                )
            with torch.no_grad():
                target.copy_(src.to(dtype=target.dtype, device=target.device))

    # --- optional hooks: each has a no-op default; docs/adding-a-member.md lists them -------------------------
    @classmethod
    def check_shape(cls, config: AdapterConfig, in_features: int, out_features: int, rank: int, path: str) -> None:
        """Refuse a layer this member cannot sit on, before anything is built (``ValueError`` naming ``path``).

        Quantum-PEFT: K must not exceed min(in, out). Default: every shape is fine."""

    def init_from_base(self, base: nn.Module) -> None:
        """Initialise from the frozen base layer right after construction (DoRA: m ← ‖W0‖_c; PiSSA: the base's
        singular vectors). Runs on the base's device. Default: nothing."""

    @classmethod
    def share(cls, adapters: list[Adapter]) -> None:
        """Let these adapters of this class (one adapter name, all layers) share work, e.g. Quantum-PEFT's batched
        circuits. Called by ``on_attach`` and by the mixture for its experts. Default: nothing."""

    def lora_factors(self) -> tuple[Tensor, Tensor] | None:
        """Exact plain-LoRA factors (A (r, in), B (out, r)) with ``B @ A * alpha / rank == delta_weight()``, for an
        exact export; None (the default) means only an SVD approximation exists."""
        return None

    @classmethod
    def on_attach(cls, model: nn.Module, config: AdapterConfig, name: str) -> None:
        """Called once after every layer has its adapter: set up model-level state. Put what must be undone
        (forward hooks, an attention switch as :class:`lorafam.core.record.Undo`) in ``entry(model, name).handles``
        and extra trainable tensors in ``.trainable``; detaching undoes and forgets them. Default: nothing."""

    @classmethod
    def on_detach(cls, model: nn.Module, config: AdapterConfig, name: str) -> None:
        """Called once when the adapter is removed (``detach`` / ``unload`` / ``merge_and_unload``), before its
        layers go and before the record's handles are undone; for state the handles do not cover. Default:
        nothing."""

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def _plain_attrs(module: nn.Module) -> dict[str, Any]:
    """A module's own non-tensor-registry attributes (what an unmerge may rebind, e.g. DoRA's merge scale)."""
    return {k: v for k, v in module.__dict__.items() if not k.startswith(("_parameters", "_buffers", "_modules"))}


# torch mutates these dicts in place and never rebinds them, so binding them once saves a lookup per call
_GLOBAL_HOOKS = (
    _nn_module._global_forward_hooks,
    _nn_module._global_forward_pre_hooks,
    _nn_module._global_backward_hooks,
    _nn_module._global_backward_pre_hooks,
)


DecodeCall = Callable[["AdaptedLayer", Tensor], "Tensor | None"]
_module_call = nn.Module.__call__
_grad_enabled = torch.is_grad_enabled
_tracing = torch._C._get_tracing_state
_compiling = torch.compiler.is_compiling  # dynamo traces the plain forward: a decode function per layer would
# make it guard on each layer's own tensors and recompile per layer (torch_compile's no-grad evaluation)


def _has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would do more than its ``forward``: hooks (own or global), a compiled call."""
    g = _GLOBAL_HOOKS
    return bool(
        module._compiled_call_impl is not None
        or module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or g[0]
        or g[1]
        or g[2]
        or g[3]
    )


# ---------------------------------------------------------------------------------------------------------------
class AdaptedLayer(nn.Module):
    """A base layer plus named adapters. ``forward`` = base(x) + Σ active adapters' contributions.

    The forward is on every token's path (210 layers per decoded token on SmolLM2), so it stays minimal: one
    base call, then each unmerged active adapter's :meth:`Adapter.add_output`.
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.active: list[str] = []
        self.merged: list[str] = []
        self.disabled = False
        self._decode_call: DecodeCall | None = None  # see Adapter.decode_call
        self._decode_miss: Adapter | None = None  # the adapter whose decode_call gave None
        # what _decode_call was built for: id(self), self.active, the base layer
        self._decode_owner, self._decode_active, self._decode_base = 0, [], None
        self.in_features, self.out_features = base_shape(base_layer)
        self.train(base_layer.training)  # a wrapper in an eval-mode model starts in eval mode

    @property
    def weight(self) -> Tensor:
        # some model code reads `.weight` of projections (dtype/device checks); point it at the base
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return base_bias(self.base_layer)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``nn.Module.__call__``, except that a call without autograd, hooks or tracing goes straight to the
        active adapter's decode function where it has one (:meth:`Adapter.decode_call`)."""
        call = self._decode_call
        if call is not None and len(args) == 1 and not kwargs and not _grad_enabled() and not _compiling():
            g = _GLOBAL_HOOKS
            base = self._modules["base_layer"]
            if (  # the layer's own state: the function was built for this layer, its one active adapter
                id(self) != self._decode_owner  # a copy made without __getstate__ shares the function
                or self.active != self._decode_active
                or base is not self._decode_base
                or self.merged
                or self.disabled
            ):
                self._decode_call = None  # forward builds a new one when the layer is eligible again
            elif not (
                self._forward_hooks
                or self._forward_pre_hooks
                or self._backward_hooks
                or self._backward_pre_hooks
                or g[0]
                or g[1]
                or g[2]
                or g[3]
                or self._compiled_call_impl is not None
                or _tracing()
                or base._forward_hooks
                or base._forward_pre_hooks
                or base._compiled_call_impl is not None
            ):
                out = call(self, args[0])
                if out is not None:
                    return out
        return _module_call(self, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_decode_call"] = state["_decode_miss"] = None  # closures: rebuilt on the next call
        state["_decode_owner"], state["_decode_active"], state["_decode_base"] = 0, [], None
        return state

    def clear_caches(self) -> None:
        """Drop the decode function (its closure holds the adapter's cached copies); the next eligible forward
        builds a new one. The adapters' own caches: :meth:`Adapter.clear_caches` (``drop_caches`` calls both)."""
        self._decode_call = self._decode_miss = None

    def add_adapter(self, name: str, adapter: Adapter) -> None:
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} is already attached to this layer")
        self.adapters[name] = adapter
        self.active.append(name)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        modules = self._modules  # direct dict reads: nn.Module.__getattr__ is slow on a per-token path
        base = modules["base_layer"]
        if type(base) is nn.Linear and not (args or kwargs or _has_hooks(base)):
            p = base._parameters
            base_out = F.linear(x, p["weight"], p["bias"])  # what nn.Linear.__call__ does, minus its overhead
            if self.disabled:
                return base_out
            active = self.active
            if len(active) == 1 and active[0] not in self.merged:  # the common case: base_out is ours alone
                adapter = modules["adapters"]._modules[active[0]]
                if (
                    self._decode_call is None
                    and self._decode_miss is not adapter
                    and not _grad_enabled()
                    and not _compiling()
                ):
                    self._decode_call = adapter.decode_call(self, base)
                    if self._decode_call is None:
                        self._decode_miss = adapter
                    else:
                        self._decode_owner, self._decode_active = id(self), list(active)
                        self.__dict__["_decode_base"] = base  # a plain reference, not a second child module
                return adapter.add_output_(x, base_out, base)
        else:
            base_out = base(x, *args, **kwargs)
            if self.disabled:
                return base_out
        out = base_out
        adapters = modules["adapters"]._modules
        for name in self.active:
            if name not in self.merged:
                out = adapters[name].add_output(x, out, base_out, base)
        return out

    # --- merge -------------------------------------------------------------------------------------------------
    def merge(self, names: list[str] | None = None) -> None:
        """Fold the named adapters (default: the active ones) into the base weight; names this layer does not
        carry are skipped (adapters may sit on different modules)."""
        for name in names if names is not None else list(self.active):
            if name in self.merged or name not in self.adapters:
                continue  # idempotent
            adapter = self.adapters[name]
            if not adapter.mergeable:
                raise NotImplementedError(
                    f"{type(adapter).__name__} ({name!r}) cannot be merged: {adapter.not_mergeable_reason}"
                )
            adapter.merge_into(self.base_layer)
            self.merged.append(name)

    def remove_adapter(self, name: str) -> Adapter:
        """Take adapter ``name`` off this layer (unmerged first; other merged adapters stay merged). Returns it."""
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r} on this layer; attached: {list(self.adapters)}")
        if name in self.merged:  # unmerge in reverse order, then fold the others back in their order
            others = [n for n in self.merged if n != name]
            self.unmerge()
            self.merge(others)
        if name in self.active:
            self.active.remove(name)
        return self.adapters.pop(name)

    def unmerge(self) -> None:
        for name in reversed(list(self.merged)):
            self.adapters[name].unmerge_from(self.base_layer)
            self.merged.remove(name)
        if not self.merged and hasattr(self.base_layer, "drop_merged_weight"):
            self.base_layer.drop_merged_weight()  # a quantised base returns to its exact codes

    def suspend_merged(self, keep: list[str] | None = None) -> Any:
        """Unmerge every merged adapter not in ``keep`` for a while; returns ``restore()``.

        ``restore()`` puts the merged base weight back bit for bit (a copy taken here) instead of merging again:
        an unmerge/merge cycle in bf16 rounds, so repeating it drifts the weights. Merges do not commute (DoRA),
        so all merged adapters come off and the kept ones go back on in their order. Costs one copy of the
        layer's weight while suspended. Returns a no-op when nothing has to change.
        """
        keep = [] if keep is None else keep
        if all(n in keep for n in self.merged):
            return lambda: None
        merged = list(self.merged)
        base = self.base_layer
        saved = None if is_quantized(base) else base_weight(base).detach().clone()
        states = {n: _plain_attrs(self.adapters[n]) for n in merged}
        self.unmerge()
        self.merge([n for n in merged if n in keep])

        def restore() -> None:
            if saved is None:  # a quantised base: its merged copy is recomputed from the exact codes
                self.unmerge()
                self.merge(merged)
                return
            set_base_weight(base, saved)
            for n, attrs in states.items():
                self.adapters[n].__dict__.update(attrs)
            self.merged = merged

        return restore

    def extra_repr(self) -> str:
        return f"active={self.active}, merged={self.merged}, disabled={self.disabled}"
