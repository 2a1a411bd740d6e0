"""The optimizer and learning-rate schedule of ``lorafam train``, by Hugging Face's names.

``optim`` takes HF ``TrainingArguments.optim`` names that need no extra package (``adamw_torch``,
``adamw_torch_fused``, ``adafactor``, ``sgd``, ``adagrad``, ``rmsprop``) plus our short ``adamw`` / ``adam``; the
parameter groups (LoRA+ ratios, no decay on 1-D parameters) are :func:`lorafam.optim.param_groups`'s, and
``adam_beta1`` / ``adam_beta2`` / ``adam_epsilon`` / ``weight_decay`` apply as in HF. ``lr_scheduler_type`` is
any ``transformers.SchedulerType``, built by ``transformers.get_scheduler`` with ``lr_scheduler_kwargs``;
``reduce_lr_on_plateau`` and ``greedy`` step on the evaluation loss (the trainer calls :func:`step_on_eval`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lorafam.train.config import TrainConfig

METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")


def build_optimizer(model: nn.Module, cfg: TrainConfig, loraplus_ratio: float | None) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optim`` names, over :func:`lorafam.optim.param_groups`."""
    from lorafam.optim import param_groups

    groups = param_groups(model, cfg.learning_rate, loraplus_ratio, cfg.weight_decay)
    betas, eps, lr, wd = (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_epsilon, cfg.learning_rate, cfg.weight_decay
    name = cfg.optim
    if name in ("adamw", "adamw_torch"):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if name == "adamw_torch_fused":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=wd, fused=True)
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
    raise ValueError(f"optim={name!r} is not built here")  # the config validator lists the valid names


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int) -> Any:
    """``transformers.get_scheduler(cfg.lr_scheduler_type, ...)`` over ``total`` optimizer steps."""
    from transformers import get_scheduler

    try:
        return get_scheduler(
            cfg.lr_scheduler_type,
            optimizer,
            num_warmup_steps=cfg.warmup_for(total),
            num_training_steps=total,
            scheduler_specific_kwargs=dict(cfg.lr_scheduler_kwargs) or None,
        )
    except (TypeError, ValueError) as exc:
        from lorafam.train.config import ConfigError

        raise ConfigError(f"lr_scheduler_type {cfg.lr_scheduler_type} / lr_scheduler_kwargs: {exc}") from exc


def steps_per_optimizer_step(cfg: TrainConfig) -> bool:
    """Whether the schedule advances every optimizer step (False: it steps on the evaluation loss)."""
    return cfg.lr_scheduler_type not in METRIC_SCHEDULERS


def step_on_eval(scheduler: Any, cfg: TrainConfig, eval_loss: float) -> None:
    if not steps_per_optimizer_step(cfg):
        scheduler.step(eval_loss)
