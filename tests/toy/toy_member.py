"""A toy member, written only against the protocol in docs/adding-a-member.md: this one file, plus one registry
entry (which tests/unit/test_toy_member.py adds for the length of a test).

Rule: a rank-one update from two factors, ΔW = s · u v with s = alpha / rank, u (out, 1), v (1, in), so
h = W0 x + b + s · u (v x). u starts at zero (the identity at init), v is random. The update is additive, so
merging adds ΔW to W0 and unmerging subtracts it again. Roles: u is the "b" factor (LoRA+ gives it lr · ratio),
v the "a" factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lorafam.core.adapter import Adapter
from lorafam.core.config import AdapterConfig


@dataclass(kw_only=True)
class ToyConfig(AdapterConfig):
    """The toy's config: only the fields every member shares (rank, alpha, dropout, targets...)."""

    method: ClassVar[str] = "toy"

    def to_peft(self) -> dict[str, Any]:
        return {"peft_type": self.peft_type, "r": self.rank, "lora_alpha": self.alpha}

    @classmethod
    def accepts_peft(cls, d: dict[str, Any]) -> bool:
        return d.get("peft_type") == cls.spec().peft_type


class ToyAdapter(Adapter):
    """s · u (v x) on one linear layer; ``u`` (out, 1), ``v`` (1, in)."""

    def __init__(self, config: ToyConfig, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__(config, in_features, out_features, rank, alpha)
        self.u = nn.Parameter(torch.zeros(out_features, 1))  # (out, 1)
        self.v = nn.Parameter(torch.randn(1, in_features) / in_features**0.5)  # (1, in)
        self.scale = alpha / rank

    def param_roles(self) -> dict[str, str]:
        return {"u": "b", "v": "a"}

    def delta_weight(self, base: nn.Module) -> Tensor:
        return self.scale * (self.u.float() @ self.v.float())  # (out, in)

    def delta_output(self, x: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        coeff = x.to(self.v.dtype) @ self.v.t()  # (..., 1)
        return (self.scale * coeff @ self.u.t()).to(base_out.dtype)  # (..., out)

    def peft_state(self) -> dict[str, Tensor]:
        return {"toy_u": self.u, "toy_v": self.v}
