"""AdaLoRA's rank allocator and orthogonality regulariser, as one trainer callback.

"Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", Zhang et al., ICLR 2023 —
https://arxiv.org/abs/2303.10512 (§3.2 importance scores, §3.3 budget schedule). Formulas as the authors' code
(QingruZhang/AdaLoRA ``loralib/adalora.py``) and PEFT's ``RankAllocator`` compute them:

- sensitivity of every entry w of P, Λ, Q:  I = |w · ∂L/∂w|
- smoothing:    Ī ← β1 Ī + (1 − β1) I          uncertainty:  Ū ← β2 Ū + (1 − β2) |I − Ī|        score s = Ī · Ū
- triplet i of a matrix:  S_i = s(λ_i) + mean_j s(Q_ij) + mean_k s(P_ki)
- budget b(t) (total kept triplets over all matrices), b0 = Σ initial ranks, bT = target_rank × #matrices:
      t ≤ tinit: b0 (no masking);   tinit < t < T − tfinal: bT + (b0 − bT)(1 − (t − tinit)/(T − tfinal − tinit))³,
      truncated to an int, re-allocated every ``delta_t`` steps;   t = T − tfinal: bT, final;   later: frozen.
- allocation: λ_i ← 0 for every triplet whose S_i is ≤ the (b0 − b)-th smallest score over the whole model.
  Masked P/Q entries keep training and a triplet can come back at the next allocation (paper: "soft" pruning).
- regulariser:  γ · mean over matrices of ‖QQᵀ − I‖_F and ‖PᵀP − I‖_F (the code's unsquared norm; the paper
  writes the squared one).

Call order (the trainer does this; a hand-written loop can too): loss + ``extra_loss`` → backward →
``optimizer.step()`` → ``on_optimizer_step(step)`` → ``zero_grad()``. Importance uses the gradients still held.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from lorafam.methods.adalora import AdaLoraAdapter, AdaLoraConfig, check_schedule
from lorafam.train.callbacks import Callback


def budget_schedule(
    step: int, init_bgt: int, target_bgt: int, tinit: int, tfinal: int, total_step: int, delta_t: int
) -> tuple[int, bool]:
    """(budget, whether to re-allocate at this step) of the cubic schedule."""
    if step <= tinit:
        return init_bgt, False
    if step > total_step - tfinal:
        return target_bgt, True
    coeff = 1 - (step - tinit) / (total_step - tfinal - tinit)
    return int((init_bgt - target_bgt) * (coeff**3) + target_bgt), step % delta_t == 0


class AdaLoraAllocator(Callback):
    """Importance-driven rank allocation for adapter ``name`` (see the module docstring).

    Args:
        model: the model carrying the AdaLoRA adapter.
        config: its :class:`AdaLoraConfig` (``rank_pattern`` is updated in place, as PEFT does).
        name: the adapter name.
        total_steps: the trainer's number of optimizer steps (0 = unknown: use ``config.total_step``).
    """

    name = "adalora"
    unshardable = (
        "its rank allocator scores every singular value from the whole P, Λ, Q tensors and their gradients and "
        "masks the lowest across all layers, so it needs them unsharded on every rank"
    )

    @classmethod
    def for_adapter(
        cls, model: nn.Module, config: AdaLoraConfig, name: str, total_steps: int
    ) -> AdaLoraAllocator | None:
        """The allocator + regulariser when adapter ``name`` is being trained (None for a frozen one)."""
        from lorafam.core.inject import adapted_layers

        trainable = any(
            p.requires_grad
            for _, layer in adapted_layers(model)
            if name in layer.adapters
            for p in layer.adapters[name].parameters()
        )
        return cls(model, config, name, total_steps) if trainable else None

    def __init__(self, model: nn.Module, config: AdaLoraConfig, name: str = "default", total_steps: int = 0):
        from lorafam.core.inject import adapted_layers

        self.config = config
        self.adapter_name = name
        self.slots: list[tuple[str, AdaLoraAdapter]] = sorted(
            (path, layer.adapters[name]) for path, layer in adapted_layers(model) if name in layer.adapters
        )
        if not self.slots:
            raise ValueError(f"no AdaLoRA adapter named {name!r} is attached to this model")
        self.init_bgt = sum(a.rank for _, a in self.slots)
        self.target_bgt = config.target_rank * len(self.slots)
        self.total_step: int | None = None
        self.budget = self.init_bgt
        self.exp_avg_ipt: dict[str, Tensor] = {}
        self.exp_avg_unc: dict[str, Tensor] = {}
        self.final = False
        self._orth: float | None = None
        self.set_total_step(total_steps)

    # -- schedule ---------------------------------------------------------------------------------------------
    def set_total_step(self, total_steps: int | None) -> None:
        """Take the trainer's step count when given (it knows how long training runs), else
        ``config.total_step``; validate the schedule and record the result in the config (it is saved)."""
        cfg = self.config
        if total_steps:
            if cfg.total_step is not None and cfg.total_step != total_steps:
                warnings.warn(
                    f"AdaLoRA: config total_step={cfg.total_step} but training runs {total_steps} steps; the budget "
                    f"schedule follows the {total_steps} training steps",
                    stacklevel=2,
                )
            check_schedule(cfg.tinit, cfg.tfinal, int(total_steps), "AdaLoraConfig (total_step from the trainer)")
            self.total_step = cfg.total_step = int(total_steps)
        elif cfg.total_step is not None:
            self.total_step = cfg.total_step

    def _total(self) -> int:
        if self.total_step is None:
            raise ValueError(
                "AdaLoraConfig: 'total_step' is unknown. Set AdaLoraConfig(total_step=...) or build the callback "
                "with the trainer's total number of optimizer steps before the first allocation."
            )
        return self.total_step

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        if self.total_step is None:
            self.set_total_step(total_steps)
        self._total()

    # -- orthogonality regulariser ----------------------------------------------------------------------------
    def extra_loss(self, model: nn.Module) -> Tensor | None:
        """γ · mean_k ‖M_k M_kᵀ − I‖_F over every Q (rows) and P (columns) of this adapter."""
        if self.config.orth_reg_weight == 0:
            return None
        groups: dict[tuple[str, tuple[int, ...]], list[Tensor]] = {}
        for _, ad in self.slots:
            if ad.rank == 0:
                continue
            groups.setdefault(("rows", tuple(ad.lora_A.shape)), []).append(ad.lora_A)
            groups.setdefault(("cols", tuple(ad.lora_B.shape)), []).append(ad.lora_B.T)
        if not groups:
            return None
        total, count = None, 0
        device = self.slots[0][1].lora_A.device
        with torch.autocast(device.type, enabled=False):  # deviations from I are tiny: never in bf16
            for mats in groups.values():
                m = torch.stack(mats).float()  # (n, r, d): every matrix as rows to be made orthonormal
                cov = m @ m.transpose(1, 2)  # (n, r, r)
                eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
                part = torch.linalg.matrix_norm(cov - eye).sum()
                total = part if total is None else total + part
                count += len(mats)
        loss = self.config.orth_reg_weight * total / count
        self._orth = float(loss.detach())
        return loss

    # -- importance -------------------------------------------------------------------------------------------
    def _params(self) -> list[tuple[str, Tensor]]:
        return [(f"{p}.{k}", getattr(ad, k)) for p, ad in self.slots for k in ("lora_A", "lora_E", "lora_B")]

    @torch.no_grad()
    def update_ipt(self) -> None:
        """One EMA step of sensitivity and uncertainty for every entry of P, Λ, Q."""
        named = self._params()
        keys = [k for k, _ in named]
        params = [p.detach() for _, p in named]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in named]
        for k, p in zip(keys, params):
            if k not in self.exp_avg_ipt or self.exp_avg_ipt[k].shape != p.shape:
                self.exp_avg_ipt[k] = torch.zeros_like(p)
                self.exp_avg_unc[k] = torch.zeros_like(p)
        b1, b2 = self.config.beta1, self.config.beta2
        ipt = torch._foreach_mul(params, grads)
        torch._foreach_abs_(ipt)
        ema = torch._foreach_add(
            torch._foreach_mul([self.exp_avg_ipt[k] for k in keys], b1), torch._foreach_mul(ipt, 1 - b1)
        )
        dev = torch._foreach_sub(ipt, ema)
        torch._foreach_abs_(dev)
        unc = torch._foreach_add(
            torch._foreach_mul([self.exp_avg_unc[k] for k in keys], b2), torch._foreach_mul(dev, 1 - b2)
        )
        for k, e, u in zip(keys, ema, unc):
            self.exp_avg_ipt[k], self.exp_avg_unc[k] = e, u

    def triplet_scores(self) -> dict[str, Tensor]:
        """Module path → S (r,), the triplet importance."""
        out: dict[str, Tensor] = {}
        for path, _ in self.slots:
            s = {k: self.exp_avg_ipt[f"{path}.lora_{k}"] * self.exp_avg_unc[f"{path}.lora_{k}"] for k in "AEB"}
            out[path] = s["E"].view(-1) + (s["A"].mean(dim=1) + s["B"].mean(dim=0))
        return out

    # -- allocation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, list[bool]]:
        """Zero λ of the lowest-scoring triplets so that ``budget`` remain (ties at the threshold go too)."""
        missing = [p for p, _ in self.slots if f"{p}.lora_E" not in self.exp_avg_ipt]
        if missing:
            raise RuntimeError(f"AdaLoRA: no importance statistics yet for {missing[:3]}; call update_ipt first")
        scores = self.triplet_scores()
        k = self.init_bgt - budget
        threshold = None
        if k > 0:
            threshold = torch.kthvalue(torch.cat(list(scores.values())), k)[0].item()
        pattern: dict[str, list[bool]] = {}
        for path, ad in self.slots:
            keep = (
                torch.ones_like(scores[path], dtype=torch.bool) if threshold is None else scores[path] > threshold
            )
            ad.lora_E.masked_fill_(~keep.view(-1, 1), 0.0)
            ad.kept = keep.clone()
            pattern[f"{path}.lora_E"] = keep.tolist()
        self.config.rank_pattern = pattern
        self.budget = budget
        return pattern

    @torch.no_grad()
    def apply_frozen_mask(self) -> None:
        for _, ad in self.slots:
            if ad.kept is not None:
                ad.lora_E.masked_fill_(~ad.kept.view(-1, 1), 0.0)

    def update_and_allocate(self, step: int) -> dict[str, list[bool]] | None:
        """The per-step work (PEFT's ``update_and_allocate``); returns the new rank pattern when one was made.

        Does nothing when no parameter of the adapter holds a gradient (the adapter is not being trained)."""
        cfg, total = self.config, self._total()
        if all(p.grad is None for _, p in self._params()):
            return None
        end = total - cfg.tfinal
        sched = (self.init_bgt, self.target_bgt, cfg.tinit, cfg.tfinal, total, cfg.delta_t)
        if step < end:
            self.update_ipt()
            budget, now = budget_schedule(step, *sched)
            return self.mask_to_budget(budget) if now else None
        if not self.final:  # step == end, or the first step after it when `end` itself was skipped
            pattern = self.mask_to_budget(budget_schedule(min(step, end), *sched)[0])
            self.final = True
            self.exp_avg_ipt, self.exp_avg_unc = {}, {}
            return pattern
        self.apply_frozen_mask()
        return None

    def on_optimizer_step(self, step: int, model: nn.Module) -> None:
        self.update_and_allocate(step)

    def logs(self) -> dict[str, float]:
        out = {
            "adalora_budget": float(self.budget),
            "adalora_ranks": float(sum(a.kept_ranks() for _, a in self.slots)),
        }
        if self._orth is not None:
            out["adalora_orth_reg"] = self._orth
        return out

    # -- resume -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume, including the full P/Λ/Q: the adapter files of a checkpoint
        hold only the kept triplets, while masked ones keep training and can come back."""
        return {
            "total_step": self.total_step,
            "budget": self.budget,
            "final": self.final,
            "exp_avg_ipt": {k: v.clone() for k, v in self.exp_avg_ipt.items()},
            "exp_avg_unc": {k: v.clone() for k, v in self.exp_avg_unc.items()},
            "kept": {p: (None if a.kept is None else a.kept.tolist()) for p, a in self.slots},
            "weights": {k: p.detach().clone() for k, p in self._params()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:  # a checkpoint written before this callback existed: start the statistics afresh
            return
        self.total_step = state["total_step"]
        self.budget, self.final = state["budget"], state["final"]
        self.exp_avg_ipt = dict(state["exp_avg_ipt"])
        self.exp_avg_unc = dict(state["exp_avg_unc"])
        with torch.no_grad():
            for key, p in self._params():
                if key in state.get("weights", {}):
                    p.copy_(state["weights"][key].to(dtype=p.dtype, device=p.device))
        pattern = {}
        for path, ad in self.slots:
            kept = state["kept"].get(path)
            ad.kept = None if kept is None else torch.tensor(kept, dtype=torch.bool, device=ad.lora_E.device)
            if kept is not None:
                pattern[f"{path}.lora_E"] = list(kept)
        if pattern:
            self.config.rank_pattern = pattern
