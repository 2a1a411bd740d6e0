"""Optimizer factory, with LoRA+ parameter groups.

LoRA+: "LoRA+: Efficient Low Rank Adaptation of Large Models", Hayou, Ghosh, Yu, ICML 2024 —
https://arxiv.org/abs/2402.12354. Rule: η_B = λ · η_A (λ = ``loraplus_ratio``, 16 is the usual choice).

Groups are built from each adapter's ``param_roles()`` — never from parameter-name substrings:

| role                        | learning rate                | weight decay |
|-----------------------------|------------------------------|--------------|
| ``a`` and other 2-D params  | lr                           | weight_decay |
| ``b``                       | lr · ratio                   | weight_decay |
| ``magnitude`` (DoRA's m)    | lr · ratio  (as PEFT does)   | weight_decay (PEFT's ``loraplus_weight_decay``) |
| other 1-D params            | lr · ratio  (as PEFT does)   | 0            |

PEFT's ``create_loraplus_optimizer`` decays every parameter that is not a bias or inside a LayerNorm, so DoRA's
magnitude vector (1-D, neither) is decayed there too. Without a ratio every trainable parameter gets ``lr``
(1-D parameters skip weight decay). A ratio on a model with no ``b`` factor (Quantum-PEFT) is refused: it would
change nothing. PEFT's separate rate for embedding adapters (``loraplus_lr_embedding``) has no counterpart: no
member here adapts an embedding layer.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from lorafam.core.inject import named_adapter_params

_B_ROLES = {"b"}
_ONE_D_ROLES = {"magnitude"}


def param_groups(
    model: nn.Module,
    lr: float,
    loraplus_ratio: float | None = None,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Optimizer parameter groups (each carries a ``name`` for logs and tests)."""
    if lr <= 0:
        raise ValueError(f"'lr' must be > 0, got {lr}")
    if loraplus_ratio is not None and loraplus_ratio <= 0:
        raise ValueError(f"'loraplus_ratio' must be > 0, got {loraplus_ratio}")
    ratio = loraplus_ratio if loraplus_ratio is not None else 1.0
    groups: dict[str, dict] = {
        "a": {"params": [], "lr": lr, "weight_decay": weight_decay},
        "b": {"params": [], "lr": lr * ratio, "weight_decay": weight_decay},
        "b_no_decay": {"params": [], "lr": lr * ratio, "weight_decay": 0.0},
        "no_decay": {"params": [], "lr": lr, "weight_decay": 0.0},
    }
    seen: set[int] = set()
    for _, p, role, _ in named_adapter_params(model):
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if role in _B_ROLES or (role in _ONE_D_ROLES and loraplus_ratio is not None):
            groups["b"]["params"].append(p)
        elif role in _ONE_D_ROLES or p.ndim < 2:
            groups["b_no_decay" if loraplus_ratio is not None else "no_decay"]["params"].append(p)
        else:
            groups["a"]["params"].append(p)
    # trainable parameters outside adapters (e.g. LongLoRA's embeddings and norms)
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            groups["a" if p.ndim >= 2 else "no_decay"]["params"].append(p)
    if loraplus_ratio is not None and not any(role in _B_ROLES for _, p, role, _ in named_adapter_params(model)):
        raise ValueError(
            "'loraplus_ratio' is set but no adapter on this model has a B factor (parameter role 'b'), so LoRA+ "
            "would change nothing; it applies to LoRA, rsLoRA, QLoRA, DoRA, AdaLoRA, LongLoRA, aLoRA and mixtures "
            "of them, not to Quantum-PEFT"
        )
    out = [{"name": k, **g} for k, g in groups.items() if g["params"]]
    if not out:
        raise ValueError("the model has no trainable parameters; attach an adapter first (lf.attach)")
    return out


OPTIMIZERS = ("adamw", "adamw_torch", "adamw_torch_fused", "adam", "sgd", "adagrad", "rmsprop", "adafactor")
"""Optimizer names :func:`named_optimizer` builds: our short ``adamw`` / ``adam`` / ``sgd`` and the Hugging Face
``TrainingArguments.optim`` names that need no extra package."""


def named_optimizer(
    name: str,
    groups: list[dict[str, Any]],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """The one place an optimizer is built from its name (the API's :func:`make_optimizer` and the trainer's
    ``optim`` key both come here).

    Raises:
        ValueError: an unknown name, with the valid ones.
    """
    if name in ("adamw", "adamw_torch"):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw_torch_fused":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr, eps=eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, eps=eps)
    if name == "adafactor":  # HF's Adafactor with an explicit learning rate (as TrainingArguments builds it)
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def make_optimizer(
    model: nn.Module,
    lr: float = 2e-4,
    loraplus_ratio: float | None = None,
    weight_decay: float = 0.0,
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """The optimizer for a model's trainable parameters; LoRA+ groups when ``loraplus_ratio`` is given."""
    if optimizer not in ("adamw", "adam", "sgd"):
        raise ValueError(f"'optimizer' must be one of adamw, adam, sgd; got {optimizer!r}")
    groups = param_groups(model, lr, loraplus_ratio, weight_decay)
    return named_optimizer(optimizer, groups, lr, betas, eps, weight_decay)
