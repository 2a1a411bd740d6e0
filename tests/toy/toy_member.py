"""A toy member, written only against the protocol in docs/adding-a-member.md: this one file, plus one registry
entry (which tests/unit/test_toy_member.py adds for the length of a test).

Rule: a rank-one update from two vectors, ΔW = s · u vᵀ with s = alpha / rank, so h = W0 x + b + s · (vᵀ x) u.
u ∈ R^out starts at zero (the identity at init), v ∈ R^in is random. The update is additive, so merging adds
ΔW to W0 and unmerging subtracts it again. Roles: u is the "b" factor (LoRA+ applies), v the "a" factor.
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
    """s · (vᵀ x) u on one linear layer; ``u`` (out,), ``v`` (in,)."""

    def __init__(self, config: ToyConfig, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__(config, in_features, out_features, rank, alpha)
        self.u = nn.Parameter(torch.zeros(out_features))  # (out,)
        self.v = nn.Parameter(torch.randn(in_features) / in_features**0.5)  # (in,)
        self.scale = alpha / rank

    def param_roles(self) -> dict[str, str]:
        return {"u": "b", "v": "a"}

    def delta_weight(self, base: nn.Module) -> Tensor:
        return self.scale * torch.outer(self.u.float(), self.v.float())  # (out, in)

    def delta_output(self, x: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        coeff = x.to(self.v.dtype) @ self.v  # (...,)
        return (self.scale * coeff[..., None] * self.u).to(base_out.dtype)  # (..., out)

    def peft_state(self) -> dict[str, Tensor]:
        return {"toy_u": self.u, "toy_v": self.v}
