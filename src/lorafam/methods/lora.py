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

from lorafam.core.adapter import Adapter
from lorafam.core.config import AdapterConfig


@dataclass(kw_only=True)
class LoraConfig(AdapterConfig):
    """Plain LoRA (rsLoRA with ``use_rslora=True``)."""

    method: ClassVar[str] = "lora"
    peft_type: ClassVar[str] = "LORA"

    use_rslora: bool = False
    """Scale by α/√r instead of α/r (rsLoRA)."""
    init: Literal["kaiming", "gaussian"] = "kaiming"
    """Initialisation of A: Kaiming-uniform (PEFT's default) or N(0, 1/r); B is always zero."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-module rank overrides: key = module-name suffix or regex (PEFT's rule)."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Per-module alpha overrides, same matching as ``rank_pattern``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in ("kaiming", "gaussian"):
            raise ValueError(f"{type(self).__name__}: 'init' must be 'kaiming' or 'gaussian', got {self.init!r}")
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
            for key, value in pattern.items():
                if re.match(rf"(.*\.)?{key}$", path):
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
            "init_lora_weights": True if self.init == "kaiming" else "gaussian",
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
            "init": "gaussian" if init == "gaussian" else "kaiming",
            "rank_pattern": dict(d.get("rank_pattern") or {}),
            "alpha_pattern": dict(d.get("alpha_pattern") or {}),
        }

    @classmethod
    def accepts_peft(cls, d: dict[str, Any]) -> bool:
        return (
            d.get("peft_type") == cls.peft_type
            and not d.get("use_dora", False)
            and not d.get("alora_invocation_tokens")
        )

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
        self._inference_cache: tuple[Tensor, Tensor] | None = None
        self._inference_key: tuple[Any, ...] | None = None
        self.reset_adapter_parameters()

    def reset_adapter_parameters(self) -> None:
        with torch.no_grad():
            if self.config.init == "gaussian":
                nn.init.normal_(self.lora_A, std=1.0 / self.rank)
            else:  # nn.Linear's default, as in microsoft/LoRA loralib and PEFT
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    def param_roles(self) -> dict[str, str]:
        return {"lora_A": "a", "lora_B": "b"}

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
        sum: this is what keeps training at PEFT's speed and unmerged decoding near the base model's.
        """
        if type(self).delta_output is not LoraAdapter.delta_output:  # a subclass changed the rule: use it
            return super().add_output(x, out, base_out, base)
        no_dropout = self._no_dropout or not self.training  # train-mode no-grad forwards drop too, as in PEFT
        if no_dropout and not torch.is_grad_enabled() and x.dtype == out.dtype == self.lora_A.dtype:
            a_t, sb_t = self.inference_weights()  # decode: 2 GEMMs on cached contiguous operands, 3 views
            h = torch.mm(x.reshape(-1, self.in_features), a_t)  # (N, r)
            return torch.addmm(out.reshape(-1, self.out_features), h, sb_t).view(out.shape)
        h = F.linear(self.lora_input(x), self.lora_A)  # (..., r)
        b = self.lora_B
        if out.dtype != b.dtype and not torch.is_autocast_enabled(out.device.type):
            return out + (F.linear(h, b) * self.scaling).to(out.dtype)
        n_out, r = out.shape[-1], h.shape[-1]
        # (N, out) + s · (N, r) @ (r, out)
        fused = torch.addmm(out.reshape(-1, n_out), h.reshape(-1, r), b.t(), alpha=self.scaling)
        return fused.view(out.shape)

    def inference_weights(self) -> tuple[Tensor, Tensor]:
        """(Aᵀ (in, r), s·Bᵀ (r, out)), contiguous and detached, for forwards without autograd.

        Cached until A, B or the scale change (in-place updates bump a tensor's version; ``load_state_dict`` or
        ``.to()`` change its storage): the decode path then runs two plain GEMMs with no transposes or scaling.
        Costs one extra copy of the adapter (r·(in + out) numbers per layer).
        """
        a, b = self.lora_A, self.lora_B
        key = (a._version, b._version, a.data_ptr(), b.data_ptr(), self.scaling)  # .to() gives new storage
        if self._inference_key != key:
            with torch.no_grad():
                self._inference_cache = (a.detach().t().contiguous(), (b.detach() * self.scaling).t().contiguous())
            self._inference_key = key
        return self._inference_cache  # type: ignore[return-value]

    def peft_state(self) -> dict[str, Tensor]:
        return {"lora_A.weight": self.lora_A, "lora_B.weight": self.lora_B}
