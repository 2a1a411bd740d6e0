"""Adapters as plain low-rank terms, for serving many of them on one shared base model.

At inference every weight-update member except the routed mixture reduces, per layer, to

    y = g ∘ (W0 x + b) + c + (x Aᵀ)(S Bᵀ)          x (..., in) → (..., out)

with A (r, in), S Bᵀ (r, out) and, for DoRA only, a per-output scale g = m / ‖W0 + sBA‖_c and offset
c = (1 − g) ∘ b (fixed once the adapter stops training, so computed once at load). The base product W0 x + b is
shared by every row of a batch; each adapter adds its own term at its own rank r. Exactness of each reduction:

- LoRA / rsLoRA / LongLoRA (no trained embeddings) / aLoRA: A = ``lora_A``, S Bᵀ = s·``lora_B``ᵀ — the same product.
- DoRA: y = g ∘ (W0 x + s·BA x) + b = g ∘ (W0 x + b) + (1 − g) ∘ b + (x Aᵀ)(s·B ∘ g)ᵀ.
- AdaLoRA: A = Λ·Q restricted to the triplets with λ ≠ 0 (masked triplets contribute exactly 0), S Bᵀ = (s·P)ᵀ.
- Quantum-PEFT: A = Vᵀ, S Bᵀ = (s·U diag(λ))ᵀ (its ``lora_factors``; U, V come from the circuit once).

The mixture (router gates depend on x) has no such form: :func:`export_adapter` returns None and the engine runs
it through the model's own forward, one row at a time.

The adapter modules are built here *without* attaching them to the served model (:func:`build_adapters`), so a
load that fails — a missing tensor, a shape from another base — never touches the model or the adapters already
served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lorafam.core.adapter import Adapter
from lorafam.core.base_layer import base_bias, base_shape
from lorafam.core.config import AdapterConfig


@dataclass
class LowRank:
    """One adapter on one layer: ``y = g ∘ base_out + c + (x @ a_t) @ sb_t`` (g, c only for DoRA)."""

    a_t: Tensor
    """(in, r)."""
    sb_t: Tensor
    """(r, out), the scale (and DoRA's g) folded in."""
    g: Tensor | None = None
    """(out,) DoRA's magnitude/norm scale, or None."""
    c: Tensor | None = None
    """(out,) DoRA's (1 − g) ∘ bias, or None (no bias)."""

    @property
    def rank(self) -> int:
        return int(self.a_t.shape[1])

    def merged_weight(self, w0: Tensor) -> Tensor:
        """W0 folded with this term, (out, in) — what a plain ``F.linear(x, W', b)`` needs to give the same y."""
        delta = (self.a_t.float() @ self.sb_t.float()).T
        w = w0.float() if self.g is None else w0.float() * self.g.float()[:, None]
        return (w + delta).to(w0.dtype)

    def numel(self) -> int:
        return sum(t.numel() for t in (self.a_t, self.sb_t, self.g, self.c) if t is not None)


def export_layer(adapter: Adapter, base: nn.Module, dtype: torch.dtype) -> LowRank | None:
    """The low-rank form of one built adapter on ``base``, or None when the member has none (the mixture)."""
    from lorafam.methods.adalora import AdaLoraAdapter
    from lorafam.methods.dora import DoraAdapter
    from lorafam.methods.lora import LoraAdapter
    from lorafam.methods.quantum import QuantumAdapter

    with torch.no_grad():
        if isinstance(adapter, DoraAdapter):
            if type(adapter).delta_output is not DoraAdapter.delta_output:
                return None
            g = (adapter.lora_magnitude_vector.float() / adapter.weight_norm(base)).float()  # (out,)
            sb = adapter.lora_B.float() * adapter.scaling * g[:, None]  # (out, r)
            bias = base_bias(base)
            c = None if bias is None else ((1 - g) * bias.float()).to(dtype)
            return LowRank(_t(adapter.lora_A, dtype), sb.T.contiguous().to(dtype), g.to(dtype), c)
        if isinstance(adapter, LoraAdapter):
            # aLoRA's rule is LoRA's on the activated tokens; the engine decides which tokens those are
            from lorafam.methods.alora import ALoraAdapter

            plain = type(adapter).delta_output in (LoraAdapter.delta_output, ALoraAdapter.delta_output)
            if not plain:
                return None
            sb = adapter.lora_B.float() * adapter.scaling
            return LowRank(_t(adapter.lora_A, dtype), sb.T.contiguous().to(dtype))
        if isinstance(adapter, AdaLoraAdapter):
            lam = adapter.lora_E.float()[:, 0]
            keep = lam != 0
            a = adapter.lora_A.float()[keep] * lam[keep, None]  # (k, in)
            b = adapter.lora_B.float()[:, keep] * adapter.scaling  # (out, k)
            return LowRank(a.T.contiguous().to(dtype), b.T.contiguous().to(dtype))
        if isinstance(adapter, QuantumAdapter):
            a, b = adapter.lora_factors()  # A (K, in), B (out, K); B A · s = ΔW
            return LowRank(a.T.contiguous().to(dtype), (b * adapter.scaling).T.contiguous().to(dtype))
    return None


def served_method(config: AdapterConfig) -> str:
    """The method name ``/v1/models`` shows: the member's, with LoRA's variants told apart (rslora, qlora)."""
    from lorafam.methods.lora import LoraConfig

    if config.quantize:
        return "qlora"
    if type(config) is LoraConfig and config.use_rslora:
        return "rslora"
    return config.method


def invocation_of(config: AdapterConfig) -> list[int] | None:
    """aLoRA's invocation token ids (the adapter is active from their last occurrence on); None for others."""
    from lorafam.methods.alora import ALoraConfig

    if isinstance(config, ALoraConfig) and config.invocation_tokens:
        return list(config.invocation_tokens)
    return None


def _t(a: Tensor, dtype: torch.dtype) -> Tensor:
    return a.detach().float().T.contiguous().to(dtype)


@dataclass
class BuiltAdapter:
    """An adapter folder read and built against the served base (not attached to it)."""

    config: AdapterConfig
    peft_config: dict[str, Any]
    state: dict[str, Tensor]
    modules: dict[str, Adapter] = field(default_factory=dict)
    chat_template: str | None = None


def read_chat_template(path: Path) -> str | None:
    """The adapter folder's own chat template (``chat_template.jinja`` or ``tokenizer_config.json``), if any."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    tok_cfg = path / "tokenizer_config.json"
    if tok_cfg.is_file():
        try:
            tmpl = json.loads(tok_cfg.read_text()).get("chat_template")
        except json.JSONDecodeError as exc:
            raise ValueError(f"{tok_cfg}: not valid JSON ({exc})") from exc
        if isinstance(tmpl, str):
            return tmpl
    return None


def build_adapters(layers: dict[str, nn.Module], path: Path) -> BuiltAdapter:
    """Read the adapter at ``path`` and build its modules on the base layers ``layers`` (path → layer).

    Raises:
        FileNotFoundError / ValueError / KeyError: the reasons :func:`lorafam.load_adapter` gives (missing files,
            unsupported ``peft_type``, shapes of another base), plus tensors for modules outside the targets
            (LongLoRA's trained embeddings/norms change the shared base, so they cannot be served here).
    """
    from lorafam.core.checkpoint import (
        CONFIG_NAME,
        PREFIX,
        WEIGHTS_NAME,
        read_adapter_config,
        read_adapter_weights,
    )
    from lorafam.core.checkpoint import config_from_peft as _config_from_peft
    from lorafam.core.inject import make_adapter, match_targets
    from lorafam.family import spec_for_config
    from lorafam.methods.longlora import LongLoraConfig

    d = read_adapter_config(path)
    config = _config_from_peft(d, source=str(path / CONFIG_NAME))
    if isinstance(config, LongLoraConfig) and config.target_context:
        raise ValueError(
            f"{path / CONFIG_NAME}: this LongLoRA adapter rescales the base's RoPE (target_context="
            f"{config.target_context}), which would change every other request; serve it alone with `lorafam chat`"
        )
    state = read_adapter_weights(path)
    config.check_load(d, state)
    spec = spec_for_config(config)
    picked = match_targets(list(layers), config.targets, config.exclude)
    if not picked:
        raise ValueError(
            f"{path / CONFIG_NAME}: target_modules={config.targets!r} match no layer of the served base"
        )
    built = BuiltAdapter(config=config, peft_config=d, state=state, chat_template=read_chat_template(path))
    remaining = dict(state)
    source = str(path / WEIGHTS_NAME)
    for p in picked:
        base = layers[p]
        in_f, out_f = base_shape(base)
        rank, alpha = config.rank_alpha_for(p)
        module = make_adapter(spec.adapter_cls, config, in_f, out_f, rank, alpha, p)
        ref = next(iter(base.parameters()))
        module.to(device=ref.device).eval()
        prefix = f"{PREFIX}{p}."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        for k in list(remaining):
            if k.startswith(prefix):
                remaining.pop(k)
        sub = {k.replace(".default.", ".").removesuffix(".default"): v for k, v in sub.items()}
        sub.pop("ranknum", None)
        module.load_peft_state(sub, where=f"{source}: {p}")
        built.modules[p] = module
    if remaining:
        raise KeyError(
            f"{source}: tensors outside the adapted layers {sorted(remaining)[:4]} — this adapter also changes the "
            "base model itself (e.g. LongLoRA's trained embeddings/norms), which a shared server cannot do"
        )
    return built


def export_adapter(built: BuiltAdapter, layers: dict[str, nn.Module]) -> dict[str, LowRank] | None:
    """Layer path → low-rank term for every layer, or None if one layer has no low-rank form."""
    out: dict[str, LowRank] = {}
    for p, module in built.modules.items():
        base = layers[p]
        dtype = next(iter(base.parameters())).dtype
        lr = export_layer(module, base, dtype)
        if lr is None:
            return None
        if lr.rank > 0:
            out[p] = lr
    return out
