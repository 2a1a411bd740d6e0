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

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _nn_module

from lorafam.core.config import AdapterConfig

try:  # GPT-2 style layers keep their weight as (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()  # type: ignore[assignment,misc]


# ---------------------------------------------------------------------------------------------------------------
# Views on the base layer: one place that knows the layouts (Linear (out, in), Conv1D (in, out), quantised).
# ---------------------------------------------------------------------------------------------------------------
def is_quantized(layer: nn.Module) -> bool:
    return hasattr(layer, "dequantize_weight")


def base_shape(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a supported base layer."""
    if isinstance(layer, nn.Linear) or is_quantized(layer):
        return layer.in_features, layer.out_features
    if Conv1D and isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    raise TypeError(f"unsupported base layer type {type(layer).__name__}")


def base_weight(layer: nn.Module) -> Tensor:
    """The base weight as an (out, in) tensor: a view for float layers, a dequantised copy otherwise."""
    if is_quantized(layer):
        return layer.dequantize_weight()
    if Conv1D and isinstance(layer, Conv1D):
        return layer.weight.T
    return layer.weight


def add_to_base_weight(layer: nn.Module, delta: Tensor) -> None:
    """W ← W + delta in place (delta in (out, in) layout).

    A quantised base that offers ``add_to_weight`` keeps a dense float copy beside its codes (never re-quantised);
    others refuse, since merging would re-quantise.
    """
    if is_quantized(layer) and hasattr(layer, "add_to_weight"):
        layer.add_to_weight(delta)
        return
    if is_quantized(layer):
        raise NotImplementedError(
            "cannot merge into a quantised (NF4) base in place: that would re-quantise the weights. "
            "Use lf.merge_and_unload(model), which returns a dequantised merged model."
        )
    with torch.no_grad():
        w = base_weight(layer)
        w.add_(delta.to(device=w.device, dtype=w.dtype))


def set_base_weight(layer: nn.Module, new: Tensor) -> None:
    """W ← new in place (new in (out, in) layout); quantised bases with ``set_weight`` keep a dense copy."""
    if is_quantized(layer) and hasattr(layer, "set_weight"):
        layer.set_weight(new)
        return
    if is_quantized(layer):
        raise NotImplementedError("cannot overwrite a quantised base weight in place")
    with torch.no_grad():
        w = base_weight(layer)
        w.copy_(new.to(device=w.device, dtype=w.dtype))


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted module ``path`` of ``model``, in place of what is there."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def base_bias(layer: nn.Module) -> Tensor | None:
    return getattr(layer, "bias", None)


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
        self.in_features, self.out_features = base_shape(base_layer)
        self.train(base_layer.training)  # a wrapper in an eval-mode model starts in eval mode

    @property
    def weight(self) -> Tensor:
        # some model code reads `.weight` of projections (dtype/device checks); point it at the base
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return base_bias(self.base_layer)

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
                return modules["adapters"]._modules[active[0]].add_output_(x, base_out, base)
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
