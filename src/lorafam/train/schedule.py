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
    """The optimizer ``cfg.optim`` names (:func:`lorafam.optim.named_optimizer`), over
    :func:`lorafam.optim.param_groups`."""
    from lorafam.optim import named_optimizer, param_groups

    groups = param_groups(model, cfg.learning_rate, loraplus_ratio, cfg.weight_decay)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    return named_optimizer(cfg.optim, groups, cfg.learning_rate, betas, cfg.adam_epsilon, cfg.weight_decay)


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
