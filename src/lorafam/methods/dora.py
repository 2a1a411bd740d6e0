"""DoRA: weight-decomposed low-rank adaptation.

"DoRA: Weight-Decomposed Low-Rank Adaptation", Liu et al., ICML 2024 — https://arxiv.org/abs/2402.09353

Update rule:  W' = m · (W0 + s·BA) / ‖W0 + s·BA‖_c,  m ∈ R^{out} initialised to ‖W0‖_c (row norms),
with the norm treated as a constant in backprop (paper §4.3). So W' = W0 at init (B = 0).

Forward without forming W' (g = m / ‖W0 + s·BA‖_c, a per-output-row factor):
    h = g · (W0 x + s·BA x) + b = base(x) + (g − 1)·W0 x + g·s·BA x
W0 x is taken from the base output (minus bias) unless dropout is active in training, where the paper's rule
needs W0·dropout(x) and one extra matmul is paid.

The row norm is computed from r-sized pieces, never materialising W0 + s·BA:
    ‖W0 + sBA‖²_i = ‖W0‖²_i + 2s·Σ_k B_ik (W0 Aᵀ)_ik + s²·(B (A Aᵀ) ∘ B)_i
and cached until A, B, the scale or the base weight change (tensor version counters and storage pointers):
one computation per optimizer step however many micro-batches, and none per decoded token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorafam.core.adapter import AdaptedLayer, DecodeCall
from lorafam.core.base_layer import base_bias, base_weight, is_quantized, set_base_weight
from lorafam.methods.lora import LoraAdapter, LoraConfig, same_output_rule

_inference_mode = torch.is_inference_mode_enabled


@dataclass(kw_only=True)
class DoraConfig(LoraConfig):
    """DoRA: LoRA direction + a trainable per-row magnitude."""

    method: ClassVar[str] = "dora"

    def to_peft(self) -> dict[str, Any]:
        d = super().to_peft()
        d["use_dora"] = True
        return d

    @classmethod
    def accepts_peft(cls, d: dict[str, Any]) -> bool:
        return d.get("peft_type") == "LORA" and bool(d.get("use_dora")) and not d.get("alora_invocation_tokens")


class DoraAdapter(LoraAdapter):
    """DoRA on one linear layer (see module docstring for the rule and shapes)."""

    def __init__(self, config: DoraConfig, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__(config, in_features, out_features, rank, alpha)
        self.lora_magnitude_vector = nn.Parameter(torch.ones(out_features))  # (out,)
        self._w0_sq: Tensor | None = None  # cached ‖W0‖²_c
        self._w0_key: tuple[int, int] | None = None
        self._norm_cache: Tensor | None = None  # ‖W0 + s·BA‖_c, detached
        self._norm_cache_key: tuple[Any, ...] | None = None
        self._g_cache: tuple[Tensor, int, int, Tensor] | None = None
        self._merge_scale: Tensor | None = None
        self._decode_cache: tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor] | None = None
        self._decode_key: tuple[Any, ...] | None = None
        self._decode_fast: tuple[Any, ...] | None = None  # (flat key, g, c, (g·s·B)ᵀ, Aᵀ): add_output_

    def init_from_base(self, base: nn.Module) -> None:
        """m ← ‖W0‖_c (after PiSSA/OLoRA rewrote W0, if asked: ‖W_res + s·BA‖_c, as PEFT). Real weights only."""
        super().init_from_base(base)
        w = base_weight(base)
        if w.is_meta:
            raise RuntimeError("DoRA magnitude cannot be initialised from meta tensors; load the base first")
        with torch.no_grad():
            w = w.float()
            if self.config.init in ("pissa", "olora"):  # B ≠ 0: the norm of the whole W_res + s·BA, as PEFT
                w = w + self.scaling * (self.lora_B.float() @ self.lora_A.float())
            self.lora_magnitude_vector.copy_(torch.linalg.norm(w, dim=1))

    def param_roles(self) -> dict[str, str]:
        return {"lora_A": "a", "lora_B": "b", "lora_magnitude_vector": "magnitude"}

    def peft_state(self) -> dict[str, Tensor]:
        return {**super().peft_state(), "lora_magnitude_vector": self.lora_magnitude_vector}

    def clear_caches(self) -> None:
        super().clear_caches()
        self._w0_sq = self._w0_key = self._norm_cache = self._norm_cache_key = self._g_cache = None
        self._decode_cache = self._decode_key = self._decode_fast = None

    # -- the norm ----------------------------------------------------------------------------------------------
    def _w0_row_sq(self, w0: Tensor, base: nn.Module) -> Tensor:
        if torch.compiler.is_compiling():  # traced by dynamo: recomputed, as weight_norm's cache is skipped there
            return (w0.float() ** 2).sum(dim=1)
        key = (id(base), getattr(w0, "_version", 0)) if not is_quantized(base) else (id(base), -1)
        if self._w0_sq is None or self._w0_key != key or self._w0_sq.device != w0.device:
            self._w0_sq = (w0.float() ** 2).sum(dim=1)
            self._w0_key = key
        return self._w0_sq

    def _norm_key(self, base: nn.Module) -> tuple[Any, ...]:
        """What the norm depends on: A, B (version counters and storage), the scale and the base weight.

        A quantised base's weight is not a tensor with a version (its dense merged copy can come and go), so its
        key ends in -1 and :meth:`weight_norm` does not cache for it.
        """
        p = self._parameters
        a, b = p["lora_A"], p["lora_B"]
        if type(base) is nn.Linear:  # the common case, without hasattr() probes (slow when they fail)
            w = base._parameters["weight"]
        else:
            w = None if is_quantized(base) else base_weight(base)
        return (
            a._version, b._version, a.data_ptr(), b.data_ptr(), a.device, self.scaling, id(base),
            torch.is_inference_mode_enabled(), -1 if w is None else w._version, -1 if w is None else w.data_ptr(),
        )  # fmt: skip

    def weight_norm(self, base: nn.Module) -> Tensor:
        """‖W0 + s·BA‖_c, shape (out,), detached, float32 (also under autocast: a norm is not a bf16 job).

        Without autograd (evaluation, decoding) it is cached until A, B, the scale or the base weight change
        (float bases): version counters and storage pointers, which an edit through ``.data`` does not move
        (:func:`lorafam.drop_caches`). A forward that records autograd (training) computes it afresh: A and B
        change at every optimizer step anyway, and a stale norm there would train silently wrong after an
        update the counters cannot see (an optimizer writing through ``.data``); the recomputation of a
        checkpointed layer gives the same values. The norm is a constant in backprop (paper §4.3).
        """
        # traced by dynamo (torch_compile): recomputed each forward, since the cache key reads version counters,
        # storage pointers and inference mode, each a graph break
        fresh = torch.compiler.is_compiling() or torch.is_grad_enabled()
        if not fresh:
            key = self._norm_key(base)
            if self._norm_cache is not None and self._norm_cache_key == key and key[-1] != -1:
                return self._norm_cache
        w0 = base_weight(base)
        with torch.no_grad():
            if torch.is_autocast_enabled(w0.device.type):
                with torch.autocast(w0.device.type, enabled=False):
                    norm = self._weight_norm(w0, base)
            else:
                norm = self._weight_norm(w0, base)
        if not fresh:
            self._norm_cache, self._norm_cache_key = norm, key
        return norm

    def _weight_norm(self, w0: Tensor, base: nn.Module) -> Tensor:
        a, b = self.lora_A.float(), self.lora_B.float()
        s = self.scaling
        # ‖W0 + sBA‖²_i = ‖W0‖²_i + Σ_k B_ik T_ik  with  T = 2s·W0Aᵀ + s²·B(AAᵀ)  (out, r): one addmm for T
        t = torch.addmm(b @ (a @ a.T), w0.float(), a.T, beta=s * s, alpha=2 * s)
        sq = torch.linalg.vecdot(b, t).add_(self._w0_row_sq(w0, base))
        return sq.clamp_min_(0).sqrt_()

    def _scale(self, base: nn.Module) -> Tensor:
        """g = m / ‖W0 + s·BA‖_c (out,); g itself is cached too when no gradient is being recorded."""
        m = self._parameters["lora_magnitude_vector"]
        norm = self.weight_norm(base)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return m / norm
        cached = self._g_cache  # (norm it was computed from, m's version, m's storage, g)
        if cached is None or cached[0] is not norm or cached[1:3] != (m._version, m.data_ptr()):
            cached = self._g_cache = (norm, m._version, m.data_ptr(), m / norm)
        return cached[3]

    # -- forward ----------------------------------------------------------------------------------------------
    def delta_output(self, x: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        g = self._scale(base)  # (out,)
        if isinstance(self.drop, nn.Identity) or not self.training:
            lora = self.lora_path(x)  # (..., out)
            bias = base_bias(base)
            w0x = base_out if bias is None else base_out - bias
        else:  # PEFT's rule: base(x) + (g-1)·W0·drop(x) + g·s·BA·drop(x), one mask for both terms
            xd = self.drop(x)
            lora = self.lora_path(xd, dropped=True)
            w0x = F.linear(xd.to(base_out.dtype), base_weight(base).to(base_out.dtype))
        delta = (g - 1) * w0x.to(g.dtype) + g * lora.to(g.dtype)
        return delta.to(base_out.dtype)

    def add_output(self, x: Tensor, out: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        """The whole DoRA layer output g · (W0 x + s·BA x) + b, fused when DoRA is the first active adapter.

        y = W0 x + s·BA x comes from one ``addmm`` on the base output, then one multiply by g: backward keeps a
        single (..., out) tensor (y, for m's gradient) where the three-term form keeps two. At inference g is
        folded into a cached copy of B (:meth:`decode_weights`). Other cases (a second adapter on the layer,
        dropout in training, a subclass with its own rule) take the general ``out + delta_output`` path.
        """
        p = self._parameters  # direct dict reads: nn.Module.__getattr__ is slow on a per-token path
        fusable = (
            out is base_out
            and type(self).delta_output is DoraAdapter.delta_output
            and (self._no_dropout or not self.training)
        )
        if (
            fusable
            and not torch.is_grad_enabled()
            and x.dtype == out.dtype == p["lora_A"].dtype
            and not torch.compiler.is_compiling()
        ):
            g, gsb, c, gsbt, at = self._decode_all(base)  # y = g ⊙ base(x) + (g·s·B) A x + (1 − g) ⊙ b
            if x.dim() == 3 and x.shape[0] == 1:  # batch 1 (decoding): bmm on cached transposes, as LoRA
                scaled = base_out * g if c is None else torch.addcmul(c, base_out, g)
                return torch.baddbmm(scaled, torch.bmm(x, at), gsbt)
            d = F.linear(F.linear(x, p["lora_A"]), gsb)
            return torch.addcmul(d if c is None else d.add_(c), base_out, g)
        if not (fusable and (out.dtype == p["lora_B"].dtype or torch.is_autocast_enabled(out.device.type))):
            return super().add_output(x, out, base_out, base)
        g = self._scale(base)  # (out,)
        bias = base_bias(base)
        w0x = base_out if bias is None else base_out - bias
        h = F.linear(self.lora_input(x), self.lora_A)  # (..., r)
        n_out, r = w0x.shape[-1], h.shape[-1]
        # y = W0 x + s · h Bᵀ: (N, out) + s · (N, r) @ (r, out)
        y = torch.addmm(w0x.reshape(-1, n_out), h.reshape(-1, r), self.lora_B.t(), alpha=self.scaling)
        y = y * g.to(y.dtype)
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.view(base_out.shape)

    def add_output_(self, x: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        """Decoding (batch 1, no autograd, the layer's only adapter), in place on the base output:
        ``base_out ← g ⊙ base_out [+ (1 − g) ⊙ b]``, then ``+= (x Aᵀ)(g·s·B)ᵀ`` (``baddbmm_``), on cached
        constants (:meth:`decode_weights`): g, the norm and the scaled factors are computed once per weight
        state, never per token. Anything else takes :meth:`add_output`.

        The base is a plain ``nn.Linear`` here (see :meth:`Adapter.add_output_`), so what the constants depend
        on is checked with one flat key (A, B, m, W0, bias: version counters and storage; the scale; inference mode)
        instead of :meth:`_decode_all`'s general one: this runs for every layer and token.
        """
        if not self._in_place_decode(x, DoraAdapter):
            return self.add_output(x, base_out, base_out, base)
        p = self._parameters
        a, b, m, w = p["lora_A"], p["lora_B"], p["lora_magnitude_vector"], base._parameters["weight"]
        key = _flat_key(a, b, m, w, base._parameters["bias"], self.scaling)
        fast = self._decode_fast
        if fast is None or fast[0] != key:
            g, _, c, gsbt, at = self._decode_all(base)
            fast = self._decode_fast = (key, g, c, gsbt, at)
        at = fast[4]
        if x.dtype is not at.dtype or base_out.dtype is not at.dtype:
            return self.add_output(x, base_out, base_out, base)
        h = torch.bmm(x, at)
        base_out.mul_(fast[1])
        if fast[2] is not None:
            base_out.add_(fast[2])
        return base_out.baddbmm_(h, fast[3])

    def decode_call(self, layer: AdaptedLayer, base: nn.Module) -> DecodeCall | None:
        """``g ⊙ base(x) [+ (1 − g) ⊙ b] + (x Aᵀ)(g·s·B)ᵀ`` for a (1, T, in) input without autograd, in place on
        the fresh base output, on :meth:`_decode_all`'s constants; every check of :meth:`add_output_` (and of
        the layer's forward) is done here in one frame. See :meth:`Adapter.decode_call`."""
        if type(base) is not nn.Linear or not same_output_rule(self, DoraAdapter):
            return None
        p, bp = self._parameters, base._parameters
        a, b, m, w, bias = p["lora_A"], p["lora_B"], p["lora_magnitude_vector"], bp["weight"], bp["bias"]
        va, vb, vm, vw = (t._version for t in (a, b, m, w))
        pa, pb, pm, pw = (t.data_ptr() for t in (a, b, m, w))
        vc, pc = _tensor_state(bias)
        scale, inference = self.scaling, torch.is_inference_mode_enabled()
        g, _, c, gsbt, at = self._decode_all(base)
        dtype, no_dropout = at.dtype, self._no_dropout
        if w.dtype is not dtype:
            return None
        wt = w.detach().t().unsqueeze(0)  # W0ᵀ as a (1, in, out) view (LoraAdapter.decode_call)

        def call(owner: AdaptedLayer, x: Tensor) -> Tensor | None:
            if (
                p["lora_A"] is not a
                or p["lora_B"] is not b
                or p["lora_magnitude_vector"] is not m
                or bp["weight"] is not w
                or bp["bias"] is not bias
                or not (no_dropout or not self.training)
                or a._version != va  # what the constants depend on (as _flat_key), compared one by one
                or b._version != vb
                or m._version != vm
                or w._version != vw
                or a.data_ptr() != pa
                or b.data_ptr() != pb
                or m.data_ptr() != pm
                or w.data_ptr() != pw
                or (bias is not None and (bias._version != vc or bias.data_ptr() != pc))
                or self.scaling != scale
                or _inference_mode() is not inference
            ):
                owner._decode_call = None
                return None
            shape = x.shape
            if len(shape) != 3 or shape[0] != 1 or x.dtype is not dtype:
                return None
            h = torch.bmm(x, at)
            out = (torch.bmm(x, wt) if bias is None else F.linear(x, w, bias)).mul_(g)
            if c is not None:
                out.add_(c)
            return out.baddbmm_(h, gsbt)

        return call

    def decode_weights(self, base: nn.Module) -> tuple[Tensor, Tensor, Tensor | None]:
        """(g, g·s·B (out, r), (1 − g) ⊙ bias or None) for forwards without autograd, cached.

        With these the layer output is ``g ⊙ base(x) + (g·s·B)(A x) + (1 − g) ⊙ b``: three calls per layer and
        token, as for LoRA. Cached until A, B, m, the scale or the base weight change (version counters and
        storage pointers) or inference mode is entered or left.
        """
        return self._decode_all(base)[:3]

    def _decode_all(self, base: nn.Module) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """:meth:`decode_weights` plus (g·s·B)ᵀ (1, r, out) and Aᵀ (1, in, r) as contiguous copies for the
        batch-1 ``bmm`` / ``baddbmm``."""
        p = self._parameters
        a, b, m = p["lora_A"], p["lora_B"], p["lora_magnitude_vector"]
        bias = base_bias(base)
        key = (*self._norm_key(base), m._version, m.data_ptr(), *_tensor_state(bias))
        if self._decode_key != key:
            with torch.no_grad():
                g = self._scale(base).to(b.dtype)
                c = None if bias is None else ((1 - g) * bias.to(g.dtype)).contiguous()
                gsb = (b * (self.scaling * g).unsqueeze(1)).contiguous()
                at = a.t().contiguous().unsqueeze(0)
                self._decode_cache = (g, gsb, c, gsb.t().contiguous().unsqueeze(0), at)
            self._decode_key = key
        return self._decode_cache  # type: ignore[return-value]

    # -- merge: W' = g · (W0 + s·BA); unmerge divides g back out -----------------------------------------------
    def delta_weight(self, base: nn.Module) -> Tensor:
        w0 = base_weight(base).float()
        lora = super().delta_weight(base)
        g = (self.lora_magnitude_vector.float() / self.weight_norm(base)).unsqueeze(1)
        return g * (w0 + lora) - w0

    def merge_into(self, base: nn.Module) -> None:
        with torch.no_grad():
            w0 = base_weight(base).float()
            lora = LoraAdapter.delta_weight(self, base)
            g = (self.lora_magnitude_vector.float() / self.weight_norm(base)).unsqueeze(1)
            set_base_weight(base, g * (w0 + lora))
            self._merge_scale = g

    def unmerge_from(self, base: nn.Module) -> None:
        assert self._merge_scale is not None, "unmerge without a prior merge"
        with torch.no_grad():
            merged = base_weight(base).float()
            lora = LoraAdapter.delta_weight(self, base)
            set_base_weight(base, merged / self._merge_scale - lora)
            self._merge_scale = None


def _tensor_state(t: Tensor | None) -> tuple[int, int]:
    return (-1, -1) if t is None else (t._version, t.data_ptr())


def _flat_key(a: Tensor, b: Tensor, m: Tensor, w: Tensor, bias: Tensor | None, scale: float) -> tuple[Any, ...]:
    """What DoRA's decoding constants depend on, for a plain ``nn.Linear`` base: A, B, m, W0 and the bias
    (version counters and storage), the scale, inference mode."""
    return (
        a._version, b._version, m._version, w._version, a.data_ptr(), b.data_ptr(), m.data_ptr(), w.data_ptr(),
        *_tensor_state(bias), scale, torch.is_inference_mode_enabled(),
    )  # fmt: skip
