"""LoRA and rsLoRA.

LoRA: "LoRA: Low-Rank Adaptation of Large Language Models", Hu et al., 2021 — https://arxiv.org/abs/2106.09685
rsLoRA: "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", Kalajdzievski, 2023 —
https://arxiv.org/abs/2312.03732

Update rule:  h = W0 x + b + s · B A dropout(x),  A ∈ R^{r×in}, B ∈ R^{out×r},
s = α / r (LoRA) or α / √r (rsLoRA). A starts Kaiming-uniform (a=√5), B at zero, so ΔW = 0 at init.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorafam.core.adapter import AdaptedLayer, Adapter, DecodeCall
from lorafam.core.config import AdapterConfig

_inference_mode = torch.is_inference_mode_enabled
_compiling = torch.compiler.is_compiling  # under dynamo: no cached decode factors (their keys break graphs)

INITS = ("kaiming", "gaussian", "pissa", "olora")
BASE_REWRITING_INITS = ("pissa", "olora")

# PEFT's init_lora_weights values, by what loading a file written with them does to the outputs.
# Weights come from the file and PEFT leaves the base alone on load: the file is plain LoRA for us.
_PEFT_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal", "lora_ga", "mica")
# PEFT rewrites the base weights on load from data or randomness the file does not hold: refused.
_PEFT_REFUSED_INITS = {
    "corda": "CorDA builds its factors from calibration-data covariances",
    "loftq": "LoftQ alternates quantisation and SVD of the base (it needs bitsandbytes and the quantised base)",
    "pissa_niter_": "fast PiSSA uses a randomised SVD (torch.svd_lowrank), so the residual depends on the RNG",
}


def peft_init(init: Any, source: str) -> str:
    """Our ``init`` for a PEFT ``init_lora_weights`` value; refuses those whose load rewrites the base in a way
    lorafam cannot reproduce, saying why and how to convert the file."""
    if init in _PEFT_PLAIN_INITS:
        return "gaussian" if init == "gaussian" else "kaiming"
    if init in BASE_REWRITING_INITS:
        return str(init)
    for key, why in _PEFT_REFUSED_INITS.items():
        if isinstance(init, str) and init.startswith(key):
            raise ValueError(
                f"{source}: init_lora_weights={init!r} is not supported: when PEFT loads this adapter it rewrites "
                f"the base weights to a residual W0 - s*B0*A0, and {why}, which the adapter file does not "
                "hold — loading it as plain LoRA would give other outputs. Convert it to a plain LoRA with PEFT: "
                "peft_model.save_pretrained(out_dir, path_initial_model_for_weight_conversion=<the adapter saved "
                "right after initialisation, before training>); the result (init_lora_weights=True, rank 2r) loads "
                "on the original base in PEFT and lorafam alike."
            )
    raise ValueError(
        f"{source}: init_lora_weights={init!r} is not a value lorafam knows. Known: "
        f"{', '.join(map(repr, [*_PEFT_PLAIN_INITS, *BASE_REWRITING_INITS]))} (loaded exactly); "
        f"refused with the reason: {', '.join(map(repr, _PEFT_REFUSED_INITS))}"
    )


@dataclass(kw_only=True)
class LoraConfig(AdapterConfig):
    """Plain LoRA (rsLoRA with ``use_rslora=True``)."""

    method: ClassVar[str] = "lora"

    use_rslora: bool = False
    """Scale by α/√r instead of α/r (rsLoRA)."""
    init: Literal["kaiming", "gaussian", "pissa", "olora"] = "kaiming"
    """Initialisation. "kaiming" (PEFT's default) or "gaussian" (N(0, 1/r)): A random, B zero, base untouched.
    "pissa" (Meng et al., 2024, https://arxiv.org/abs/2404.02948) and "olora" (Büyükakyüz, 2024,
    https://arxiv.org/abs/2406.01775): A and B start from the base weight's top-r SVD / QR factors and the base
    weight is rewritten to the residual W0 − s·BA, exactly as PEFT does — also when a file with this init is
    loaded, so PEFT's PiSSA/OLoRA adapters load with PEFT's outputs. The residual stays in the base: ``unload``
    and ``disabled`` give the residual model (as in PEFT)."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-module rank overrides: key = module-name suffix or regex (PEFT's rule)."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Per-module alpha overrides, same matching as ``rank_pattern``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in INITS:
            raise ValueError(f"{type(self).__name__}: 'init' must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.init in BASE_REWRITING_INITS and self.quantize is not None:
            raise ValueError(
                f"{type(self).__name__}: init={self.init!r} rewrites the base weights from their SVD/QR, which a "
                "quantised base cannot take without re-quantising; use quantize=None (quantise the residual "
                "model afterwards, as the PiSSA authors suggest)"
            )
        for key, value in self.rank_pattern.items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{type(self).__name__}: rank_pattern[{key!r}] must be a positive int")

    def scale_for(self, rank: int, alpha: float) -> float:
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    @property
    def scaling(self) -> float:
        return self.scale_for(self.rank, float(self.alpha))

    def rank_alpha_for(self, path: str) -> tuple[int, float]:
        """(rank, alpha) for one module, honouring ``rank_pattern`` / ``alpha_pattern``."""

        def lookup(pattern: dict[str, Any], default: Any) -> Any:
            for key, value in pattern.items():  # PEFT's get_pattern_key: the key is one group, so "q|v" works
                if re.match(rf"(.*\.)?({key})$", path):
                    return value
            return default

        return int(lookup(self.rank_pattern, self.rank)), float(lookup(self.alpha_pattern, self.alpha))

    # -- PEFT config <-> ours ----------------------------------------------------------------------------------
    def to_peft(self) -> dict[str, Any]:
        return {
            "peft_type": self.peft_type,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "use_rslora": self.use_rslora,
            "use_dora": False,
            "init_lora_weights": True if self.init == "kaiming" else self.init,
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "fan_in_fan_out": False,
            "bias": "none",
            "lora_bias": False,
            "modules_to_save": None,
            "layers_to_transform": None,
            "layers_pattern": None,
            "exclude_modules": None,
            "alora_invocation_tokens": None,
        }

    @classmethod
    def peft_kwargs(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Translate the LoRA keys of a PEFT config dict into our field names."""
        init = d.get("init_lora_weights", True)
        return {
            "rank": int(d.get("r", 8)),
            "alpha": float(d.get("lora_alpha", 8)),
            "dropout": float(d.get("lora_dropout", 0.0) or 0.0),
            "use_rslora": bool(d.get("use_rslora", False)),
            "init": peft_init(init, "adapter_config.json"),
            "rank_pattern": dict(d.get("rank_pattern") or {}),
            "alpha_pattern": dict(d.get("alpha_pattern") or {}),
        }

    @classmethod
    def accepts_peft(cls, d: dict[str, Any]) -> bool:
        return (
            d.get("peft_type") == cls.spec().peft_type
            and not d.get("use_dora", False)
            and not d.get("alora_invocation_tokens")
        )

    def mixture_problem(self) -> str | None:
        if self.init in ("pissa", "olora"):
            return f"init={self.init!r} rewrites the shared base weights; not inside a mixture"
        if self.rank_pattern or self.alpha_pattern:
            return "rank_pattern / alpha_pattern are not supported inside a mixture"
        return None

    @classmethod
    def check_peft(cls, d: dict[str, Any], source: str) -> None:
        peft_init(d.get("init_lora_weights", True), source)

    @classmethod
    def from_peft(cls, d: dict[str, Any], targets: Any) -> LoraConfig:
        return cls(targets=targets, **cls.peft_kwargs(d))


class LoraAdapter(Adapter):
    """LoRA on one linear layer: contributes s · B A dropout(x).

    Args:
        config: the :class:`LoraConfig`.
        in_features / out_features: the base layer's shape.
        rank / alpha: resolved for this module (``rank_pattern`` / ``alpha_pattern`` applied).
    """

    def __init__(self, config: LoraConfig, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__(config, in_features, out_features, rank, alpha)
        self.scaling = config.scale_for(rank, alpha)
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))  # (r, in)
        self.lora_B = nn.Parameter(torch.empty(out_features, rank))  # (out, r)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._no_dropout = not config.dropout > 0  # skips a module call per layer and token when p = 0
        self._decode_factors: tuple[tuple[Any, ...], Tensor, Tensor] | None = None  # see decode_factors()
        self.reset_adapter_parameters()

    def reset_adapter_parameters(self) -> None:
        with torch.no_grad():
            if self.config.init == "gaussian":
                nn.init.normal_(self.lora_A, std=1.0 / self.rank)
            else:  # nn.Linear's default, as in microsoft/LoRA loralib and PEFT
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    def init_from_base(self, base: nn.Module) -> None:
        """PiSSA / OLoRA: A, B from the base weight's factors and W0 ← W0 − s·BA, with PEFT's exact arithmetic
        (float32 SVD/QR of the (out, in) weight, the residual cast back to the base dtype)."""
        if self.config.init not in BASE_REWRITING_INITS:
            return
        from lorafam.core.base_layer import Conv1D, base_weight, set_base_weight

        w0 = base_weight(base)
        if w0.is_meta:
            raise RuntimeError(f"init={self.config.init!r} needs the real base weights; load the base first")
        if w0.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"init={self.config.init!r}: base weight dtype {w0.dtype} is not a float type")
        r, s = self.rank, self.scaling
        with torch.no_grad():
            weight = w0.to(torch.float32)
            if self.config.init == "pissa":
                v, sv, uh = torch.linalg.svd(weight, full_matrices=False)
                sr = sv[:r] / s
                a = torch.diag(torch.sqrt(sr)) @ uh[:r]
                b = v[:, :r] @ torch.diag(torch.sqrt(sr))
            else:
                if Conv1D and isinstance(base, Conv1D):
                    raise TypeError(
                        "init='olora' on a GPT-2 Conv1D layer: PEFT factors the stored (in, out) weight there, "
                        "which gives A and B of the wrong shapes; use 'pissa' or a Linear model"
                    )
                q, rr = torch.linalg.qr(weight)
                a, b = rr[:r].contiguous(), q[:, :r].contiguous()
            self.lora_A.data = a.to(self.lora_A.dtype)
            self.lora_B.data = b.to(self.lora_B.dtype)
            set_base_weight(base, weight - s * (b @ a))

    def param_roles(self) -> dict[str, str]:
        return {"lora_A": "a", "lora_B": "b"}

    def clear_caches(self) -> None:
        self._decode_factors = None

    def delta_weight(self, base: nn.Module) -> Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)

    def lora_input(self, x: Tensor, dropped: bool = False) -> Tensor:
        """x in the adapter dtype, dropout applied unless ``dropped``. Under autocast x is left as it is: autocast
        casts it for the matmul anyway, and an fp32 copy of a bf16 activation would only cost time and memory."""
        if x.dtype != self.lora_A.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.lora_A.dtype)
        return x if dropped or self._no_dropout else self.drop(x)

    def lora_path(self, x: Tensor, dropped: bool = False) -> Tensor:
        """s · B A dropout(x) in the adapter dtype (..., out); ``dropped`` = dropout already applied to x."""
        h = F.linear(self.lora_input(x, dropped), self.lora_A)  # (..., r)
        return F.linear(h, self.lora_B) * self.scaling

    def delta_output(self, x: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        return self.lora_path(x).to(base_out.dtype)

    def add_output(self, x: Tensor, out: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        """out + s · B A dropout(x), with the scale and the addition fused into one ``addmm``.

        Two kernels per layer (A, then B-with-add), no (..., out)-sized temporaries for the scaled delta or the
        sum: this is what keeps training at PEFT's speed. Without autograd it is two calls for a batch of one
        (decoding): ``bmm`` with a cached contiguous Aᵀ and ``baddbmm`` with Bᵀ carrying the scale and the
        addition, which on CPU dispatch in about half the time of ``F.linear`` + ``F.linear`` + ``add`` (the
        path other inputs take; docs/performance.md).
        """
        if type(self).delta_output is not LoraAdapter.delta_output:  # a subclass changed the rule: use it
            return super().add_output(x, out, base_out, base)
        params = self._parameters  # direct dict reads: nn.Module.__getattr__ is slow on a per-token path
        a, b = params["lora_A"], params["lora_B"]
        no_dropout = self._no_dropout or not self.training  # train-mode no-grad forwards drop too, as in PEFT
        if no_dropout and not torch.is_grad_enabled() and x.dtype == out.dtype == a.dtype and not _compiling():
            if x.dim() == 3 and x.shape[0] == 1:  # batch 1 (decoding): bmm on cached transposes, half the time
                at, sbt = self.decode_factors()
                return torch.baddbmm(out, torch.bmm(x, at), sbt)
            return torch.add(out, F.linear(F.linear(x, a), b), alpha=self.scaling)
        h = F.linear(self.lora_input(x), a)  # (..., r)
        if out.dtype != b.dtype and not torch.is_autocast_enabled(out.device.type):
            return out + (F.linear(h, b) * self.scaling).to(out.dtype)
        n_out, r = out.shape[-1], h.shape[-1]
        # (N, out) + s · (N, r) @ (r, out)
        fused = torch.addmm(out.reshape(-1, n_out), h.reshape(-1, r), b.t(), alpha=self.scaling)
        return fused.view(out.shape)

    def _in_place_decode(self, x: Tensor, rule: type) -> bool:
        """Whether this call may take an in-place decoding path: a (1, T, in) input, no autograd, no active
        dropout, and ``rule`` (the class whose ``delta_output`` the path reproduces) still this adapter's rule."""
        shape = x.shape
        return not (
            torch.is_grad_enabled()
            or _compiling()  # dynamo traces the general rule: the caches' keys read version counters
            or len(shape) != 3
            or shape[0] != 1
            or not (self._no_dropout or not self.training)
            or type(self).delta_output is not rule.delta_output
        )

    def add_output_(self, x: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        """Decoding (batch 1, no autograd, the layer's only adapter): ``base_out += (x Aᵀ)(s·Bᵀ)`` in place.

        Two calls, and the second accumulates into the base output (``baddbmm_``: no copy of it, no new
        tensor), on the cached contiguous Aᵀ and s·Bᵀ (:meth:`decode_factors`). Anything else takes
        :meth:`add_output`.
        """
        if not self._in_place_decode(x, LoraAdapter):
            return self.add_output(x, base_out, base_out, base)
        at, sbt = self.decode_factors()
        if x.dtype is not at.dtype or base_out.dtype is not at.dtype:
            return self.add_output(x, base_out, base_out, base)
        return base_out.baddbmm_(torch.bmm(x, at), sbt)

    def decode_factors(self) -> tuple[Tensor, Tensor]:
        """(Aᵀ (1, in, r), s·Bᵀ (1, r, out)) as contiguous copies for forwards without autograd, cached until A
        or B change (version counters and storage pointers), the scale changes, or inference mode is entered or
        left."""
        p = self._parameters
        a, b = p["lora_A"], p["lora_B"]
        key = (a._version, b._version, a.data_ptr(), b.data_ptr(), self.scaling, torch.is_inference_mode_enabled())
        cached = self._decode_factors
        if cached is None or cached[0] != key:
            with torch.no_grad():
                at = a.t().contiguous().unsqueeze(0)
                sbt = (b.t() * self.scaling).contiguous().unsqueeze(0)
            cached = self._decode_factors = (key, at, sbt)
        return cached[1], cached[2]

    def decode_call(self, layer: AdaptedLayer, base: nn.Module) -> DecodeCall | None:
        """``base(x) + (x Aᵀ)(s·Bᵀ)`` for a (1, T, in) input without autograd: ``x·W0ᵀ`` (one ``bmm`` on a view
        of W0, or ``F.linear`` with a bias), then ``baddbmm_`` on :meth:`decode_factors`' copies, with every check
        of :meth:`add_output_` (and those of the layer's forward) done here in one frame; see
        :meth:`Adapter.decode_call`."""
        if type(base) is not nn.Linear or not same_output_rule(self, LoraAdapter):
            return None
        at, sbt = self.decode_factors()
        p, bp = self._parameters, base._parameters
        a, b, w, bias = p["lora_A"], p["lora_B"], bp["weight"], bp["bias"]
        va, vb, pa, pb, pw = a._version, b._version, a.data_ptr(), b.data_ptr(), w.data_ptr()
        scale, inference = self.scaling, torch.is_inference_mode_enabled()
        dtype, no_dropout = at.dtype, self._no_dropout
        if w.dtype is not dtype:
            return None
        # W0ᵀ as a (1, in, out) view: x·W0ᵀ as one bmm, which skips F.linear's 3-D folding (same kernel, same
        # bits, 1-3 µs less per call). The view sees in-place edits of W0; a new storage fails a check below.
        wt = w.detach().t().unsqueeze(0)

        def call(owner: AdaptedLayer, x: Tensor) -> Tensor | None:
            if (
                p["lora_A"] is not a
                or p["lora_B"] is not b
                or bp["weight"] is not w
                or bp["bias"] is not bias
                or not (no_dropout or not self.training)
                or a._version != va  # what decode_factors' copies depend on, compared one by one
                or b._version != vb
                or a.data_ptr() != pa
                or b.data_ptr() != pb
                or w.data_ptr() != pw  # the view below holds W0's storage: a new one (``w.data = …``) is stale
                or self.scaling != scale
                or _inference_mode() is not inference
                or w.dtype is not dtype
            ):
                owner._decode_call = None
                return None
            shape = x.shape
            if len(shape) != 3 or shape[0] != 1 or x.dtype is not dtype:
                return None
            out = torch.bmm(x, wt) if bias is None else F.linear(x, w, bias)
            return out.baddbmm_(torch.bmm(x, at), sbt)

        return call

    def peft_state(self) -> dict[str, Tensor]:
        return {"lora_A.weight": self.lora_A, "lora_B.weight": self.lora_B}


def same_output_rule(adapter: Adapter, cls: type) -> bool:
    """Whether ``adapter`` computes its output as ``cls`` does (a subclass overriding none of the three output
    methods), so that ``cls``'s decoding function reproduces it."""
    t = type(adapter)
    return (
        t.delta_output is cls.delta_output and t.add_output is cls.add_output and t.add_output_ is cls.add_output_
    )
