"""AdaLoRA: low-rank updates in SVD form whose rank budget is re-allocated during training.

"Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", Zhang, Chen, Bukharin, Karampatziakis, He,
Cheng, Chen, Zhao, ICLR 2023 — https://arxiv.org/abs/2303.10512

Update rule (paper §3.1, scaling as in the authors' code and PEFT):
    h = W0 x + b + s · P Λ Q dropout(x),   s = α / (r_init + 1e-5)
    Q = ``lora_A`` ∈ R^{r×in} (right singular vectors), Λ = diag(``lora_E``), ``lora_E`` ∈ R^{r×1},
    P = ``lora_B`` ∈ R^{out×r} (left singular vectors).
Λ starts at zero (ΔW = 0 at init). P and Q are pushed towards orthonormal by a regulariser and triplets
(P_:,i, λ_i, Q_i,:) are masked (λ_i ← 0) by importance — both live in the trainer callback of
:mod:`lorafam.train.adalora_allocator` (named by the registry), so the trainer needs no AdaLoRA-specific code (a hand-written loop
calls the same hooks).

The scale uses the *initial* rank even after a module has been resized to fewer kept triplets (PEFT's
``ranknum``), so slicing the masked triplets away never changes the output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorafam.core.adapter import Adapter
from lorafam.core.config import AdapterConfig
from lorafam.family import MEMBERS

RANKNUM_EPS = 1e-5  # PEFT and the reference code divide by (ranknum + 1e-5); kept for bit-level parity
RECOMMENDED_LR: float = float(MEMBERS["adalora"].train.lr)  # type: ignore[arg-type]
"""AdamW learning rate that learns on the default model with the default config (25× LoRA's 2e-4: Λ starts at
zero and only its r values per matrix carry the update at first). Stored once, in the registry
(``TrainDefaults(lr=...)``); measured: benchmarks/adalora.py, docs/adalora.md."""
PEFT_KEYS = ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight", "total_step")


@dataclass(kw_only=True)
class AdaLoraConfig(AdapterConfig):
    """AdaLoRA. ``rank`` is an alias of ``init_rank``; when both are given, ``init_rank`` wins (the trainer
    always passes its generic ``lora_rank`` as ``rank``).

    Recommended: AdamW at ``RECOMMENDED_LR`` (5e-3) with the default ``init="orthonormal"`` and ``alpha=16``
    (docs/adalora.md has the measurements; PEFT's defaults at lr 2e-4 leave the loss where it was after 10 steps,
    because Λ starts at zero).
    """

    method: ClassVar[str] = "adalora"
    peft_keys: ClassVar[tuple[str, ...]] = PEFT_KEYS

    rank: int | None = None  # type: ignore[assignment]
    """Alias of ``init_rank`` (set to it after construction)."""
    init_rank: int | None = None
    """Initial rank r of every adapted matrix (PEFT ``init_r``, default 12)."""
    target_rank: int | None = None
    """Average rank per matrix at the end of the schedule (PEFT ``target_r``); default two thirds of
    ``init_rank``, rounded (PEFT's 8 of 12)."""
    tinit: int = 0
    """Warm-up steps before any masking."""
    tfinal: int = 0
    """Final steps with the allocation frozen."""
    delta_t: int = 1
    """Re-allocate every ``delta_t`` steps during the budget decrease (PEFT ``deltaT``)."""
    beta1: float = 0.85
    """EMA factor of the sensitivity smoothing."""
    beta2: float = 0.85
    """EMA factor of the uncertainty."""
    orth_reg_weight: float = 0.5
    """Weight γ of the orthogonality regulariser added to the loss."""
    total_step: int | None = None
    """Total optimizer steps of the schedule. The trainer's own count replaces it (with a warning if they
    differ); a hand-written loop sets it here or passes it to ``callbacks_for``. Must be known before the first
    allocation."""
    init: Literal["orthonormal", "gaussian"] = "orthonormal"
    """P and Q start with orthonormal columns/rows ("orthonormal") or N(0, 0.02²) as in PEFT ("gaussian")."""
    rank_pattern: dict[str, list[bool]] | None = None
    """Kept triplets per module (``<path>.lora_E`` → booleans), written by the allocator; on load, modules are
    built with only the kept triplets."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        resolved = self.init_rank if self.init_rank is not None else self.rank  # init_rank wins (more specific)
        self.rank = self.init_rank = 12 if resolved is None else resolved
        super().__post_init__()
        if self.target_rank is None:
            self.target_rank = max(1, round(2 * self.init_rank / 3))
        for key in ("target_rank", "delta_t"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: '{key}' must be a positive integer, got {value!r}")
        if self.target_rank > self.init_rank:
            raise ValueError(
                f"{name}: 'target_rank' ({self.target_rank}) must be <= 'init_rank' ({self.init_rank})"
            )
        for key in ("tinit", "tfinal"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: '{key}' must be an integer >= 0, got {value!r}")
        for key in ("beta1", "beta2"):
            if not 0.0 < float(getattr(self, key)) < 1.0:
                raise ValueError(f"{name}: '{key}' must be in (0, 1), got {getattr(self, key)!r}")
        if self.orth_reg_weight < 0:
            raise ValueError(f"{name}: 'orth_reg_weight' must be >= 0, got {self.orth_reg_weight!r}")
        if self.init not in ("orthonormal", "gaussian"):
            raise ValueError(f"{name}: 'init' must be 'orthonormal' or 'gaussian', got {self.init!r}")
        if self.total_step is not None:
            check_schedule(self.tinit, self.tfinal, self.total_step, name)

    @property
    def scaling(self) -> float:
        return float(self.alpha) / (self.init_rank + RANKNUM_EPS)

    @classmethod
    def run_fields(cls, chosen: dict[str, Any], run: Any) -> dict[str, Any]:
        """The budget schedule's ``total_step`` from the run's step count (unless set)."""
        if run.total_steps and chosen.get("total_step") is None:
            return {"total_step": int(run.total_steps)}
        return {}

    def rank_alpha_for(self, path: str) -> tuple[int, float]:
        """(rank, alpha) of one module: the kept triplets of ``rank_pattern`` when it names the module."""
        mask = self.pattern_for(path)
        return (self.init_rank if mask is None else int(sum(bool(v) for v in mask))), float(self.alpha)

    def pattern_for(self, path: str) -> list[bool] | None:
        for key, mask in (self.rank_pattern or {}).items():
            module = re.sub(r"\.lora_E(\.[^.]+)?$", "", key)
            if module == path or path.endswith("." + module):
                return list(mask)
        return None

    # -- PEFT config <-> ours ----------------------------------------------------------------------------------
    def to_peft(self) -> dict[str, Any]:
        # PEFT's AdaLoraConfig refuses total_step=None even for inference; an untrained adapter gets the
        # smallest valid value (it only drives the training schedule).
        total = self.total_step if self.total_step is not None else self.tinit + self.tfinal + 1
        return {
            "peft_type": self.peft_type,
            "init_r": self.init_rank,
            "target_r": self.target_rank,
            "tinit": self.tinit,
            "tfinal": self.tfinal,
            "deltaT": self.delta_t,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "orth_reg_weight": self.orth_reg_weight,
            "total_step": total,
            "rank_pattern": None
            if self.rank_pattern is None
            else {k: list(v) for k, v in self.rank_pattern.items()},
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "init_lora_weights": True,
            "fan_in_fan_out": False,
            "bias": "none",
            "modules_to_save": None,
            "layers_to_transform": None,
            "layers_pattern": None,
            "exclude_modules": None,
        }

    @classmethod
    def accepts_peft(cls, d: dict[str, Any]) -> bool:
        return d.get("peft_type") == cls.spec().peft_type

    @classmethod
    def from_peft(cls, d: dict[str, Any], targets: Any) -> AdaLoraConfig:
        if d.get("use_dora"):
            raise ValueError("adapter_config.json: AdaLoRA with use_dora=true is not a valid PEFT config")
        pattern = d.get("rank_pattern")
        return cls(
            targets=targets,
            init_rank=int(d.get("init_r", 12)),
            target_rank=int(d.get("target_r", 8)),
            tinit=int(d.get("tinit", 0)),
            tfinal=int(d.get("tfinal", 0)),
            delta_t=int(d.get("deltaT", 1)),
            beta1=float(d.get("beta1", 0.85)),
            beta2=float(d.get("beta2", 0.85)),
            orth_reg_weight=float(d.get("orth_reg_weight", 0.5)),
            total_step=None if d.get("total_step") is None else int(d["total_step"]),
            alpha=float(d.get("lora_alpha", 8)),
            dropout=float(d.get("lora_dropout", 0.0) or 0.0),
            rank_pattern=None if not pattern else {k: [bool(b) for b in v] for k, v in pattern.items()},
        )

    def check_load(self, d: dict[str, Any], state: dict[str, Tensor]) -> None:  # type: ignore[override]
        """Check that every tensor's rank agrees with ``rank_pattern`` before building modules."""
        for key, tensor in state.items():
            if not key.endswith((".lora_E", ".lora_E.default")):
                continue
            path = key.removeprefix("base_model.model.").removesuffix(".default").removesuffix(".lora_E")
            want, _ = self.rank_alpha_for(path)
            if tensor.shape[0] != want:
                raise ValueError(
                    f"adapter_model.safetensors: {key} has rank {tensor.shape[0]} but rank_pattern/init_r in "
                    f"adapter_config.json say {want}"
                )


def check_schedule(tinit: int, tfinal: int, total_step: int, where: str = "AdaLoraConfig") -> None:
    """The budget schedule needs a decreasing phase: ``tinit + tfinal < total_step``."""
    if not isinstance(total_step, int) or total_step <= 0:
        raise ValueError(f"{where}: 'total_step' must be a positive integer, got {total_step!r}")
    if tinit + tfinal >= total_step:
        raise ValueError(
            f"{where}: 'tinit' ({tinit}) + 'tfinal' ({tfinal}) must be < 'total_step' ({total_step}), otherwise "
            "there is no budget-allocation phase. Lower tinit/tfinal or train longer."
        )


class AdaLoraAdapter(Adapter):
    """P Λ Q on one linear layer (rule and shapes in the module docstring).

    Args:
        config: the :class:`AdaLoraConfig`.
        in_features / out_features: the base layer's shape.
        rank: triplets held by this module (``init_rank``, or fewer when loaded with a ``rank_pattern``).
        alpha: scale numerator.
    """

    def __init__(self, config: AdaLoraConfig, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__(config, in_features, out_features, rank, alpha)
        self.init_rank = int(config.init_rank)
        self.ranknum = float(self.init_rank) + RANKNUM_EPS
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))  # Q (r, in)
        self.lora_E = nn.Parameter(torch.zeros(rank, 1))  # Λ (r, 1)
        self.lora_B = nn.Parameter(torch.empty(out_features, rank))  # P (out, r)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.kept: Tensor | None = None  # (r,) bool; set by the allocator, slices the saved tensors
        self.reset_adapter_parameters()

    def reset_adapter_parameters(self) -> None:
        with torch.no_grad():
            nn.init.zeros_(self.lora_E)
            if self.config.init == "gaussian" or self.rank == 0:
                nn.init.normal_(self.lora_A, std=0.02)
                nn.init.normal_(self.lora_B, std=0.02)
            else:  # orthonormal rows of Q / columns of P where the shape allows (the regulariser's optimum)
                nn.init.orthogonal_(self.lora_A)
                nn.init.orthogonal_(self.lora_B)

    def param_roles(self) -> dict[str, str]:
        return {"lora_A": "a", "lora_E": "singular", "lora_B": "b"}

    @property
    def scaling(self) -> float:
        return self.alpha / self.ranknum

    def delta_weight(self, base: nn.Module) -> Tensor:
        a, e, b = self.lora_A.float(), self.lora_E.float(), self.lora_B.float()
        return (b @ (a * e)) * self.alpha / self.ranknum  # (out, in)

    def delta_output(self, x: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        h = F.linear(self.drop(x.to(self.lora_A.dtype)), self.lora_A * self.lora_E)  # (..., r)
        out = F.linear(h, self.lora_B) * self.alpha / self.ranknum  # (..., out)
        return out.to(base_out.dtype)

    def kept_ranks(self) -> int:
        return self.rank if self.kept is None else int(self.kept.sum())

    # -- checkpoints: only kept triplets are written -----------------------------------------------------------
    def peft_state(self) -> dict[str, Tensor]:
        keep = self.kept
        if keep is None or bool(keep.all()):
            return {"lora_A": self.lora_A, "lora_E": self.lora_E, "lora_B": self.lora_B}
        return {"lora_A": self.lora_A[keep], "lora_E": self.lora_E[keep], "lora_B": self.lora_B[:, keep]}

    def load_peft_state(self, state: dict[str, Tensor], where: str) -> None:
        """Load P, Λ, Q. A file holding k < r triplets (sliced at save) fills slots 0..k-1 and the rest become
        masked triplets (λ = 0): ΔW = Σ_i λ_i P_:,i Q_i,: does not depend on the order of the triplets."""
        own = {"lora_A": self.lora_A, "lora_E": self.lora_E, "lora_B": self.lora_B}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"{where}: missing tensors {missing}, unexpected tensors {unexpected}")
        k = state["lora_E"].shape[0]
        want = {"lora_A": (k, self.in_features), "lora_E": (k, 1), "lora_B": (self.out_features, k)}
        for key, src in state.items():
            if tuple(src.shape) != want[key] or k > self.rank:
                raise ValueError(
                    f"{where}.{key}: shape {tuple(src.shape)} in the file but {tuple(own[key].shape)} in the model "
                    "(rank from rank_pattern/init_r) — was this adapter trained on a different base model?"
                )
        with torch.no_grad():
            for key, target in own.items():
                src = state[key].to(dtype=target.dtype, device=target.device)
                (target[:, :k] if key == "lora_B" else target[:k]).copy_(src)
            self.lora_E[k:].zero_()
        self.kept = None if k == self.rank else torch.arange(self.rank, device=self.lora_E.device) < k

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init_rank={self.init_rank}, kept={self.kept_ranks()}"
