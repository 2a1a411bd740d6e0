"""Turn a :class:`TrainConfig` into a model with its adapter attached (and the tokenizer)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lorafam.core.config import AdapterConfig, closest
from lorafam.train.config import ConfigError, TrainConfig


def adapter_config(cfg: TrainConfig) -> AdapterConfig:
    """The member's adapter config from the generic keys plus ``method_args``.

    ``use_dora`` turns ``method: lora`` into DoRA; ``use_rslora`` sets the flag on members that have it;
    ``quantization_bit: 4`` stores the base in NF4 (QLoRA under any member).
    """
    from lorafam.family import MEMBERS, METHODS

    method = "dora" if cfg.use_dora and cfg.method == "lora" else cfg.method
    member = MEMBERS[method]

    cls = METHODS[member.method].config_cls
    valid = cls.field_names()
    kw: dict[str, Any] = {
        "rank": cfg.lora_rank,
        "alpha": cfg.lora_alpha if cfg.lora_alpha is not None else 2.0 * cfg.lora_rank,
        "dropout": cfg.lora_dropout,
        "targets": cfg.targets(),
    }
    if cfg.use_rslora:
        if "use_rslora" not in valid:
            raise ConfigError(f"'use_rslora' is not an option of method: {cfg.method} ({cls.__name__})")
        kw["use_rslora"] = True
    if cfg.quantization_bit == 4:
        kw["quantize"] = "nf4"
        kw["compute_dtype"] = "bfloat16" if cfg.bf16 else "float32"
    for key, value in cfg.method_args.items():
        if key not in valid:
            raise ConfigError(
                f"method_args.{key}: not a field of {cls.__name__} (method: {cfg.method}).{closest(key, valid)} "
                f"Valid: {', '.join(valid)}"
            )
        kw[key] = value
    try:
        return member.make_config(**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method {cfg.method}: {exc}") from exc


def config_examples(cfg: TrainConfig, tok: Any, sources: list[Any] | None = None) -> tuple[list[Any], Any]:
    """The config's dataset (or ``sources``: eval_dataset, a ``datasets.Dataset``...), tokenised and masked as
    training sees it: (examples, load statistics)."""
    from lorafam.data.dataset import load_examples

    return load_examples(
        cfg.dataset if sources is None else sources,
        tok,
        cfg.cutoff_len,
        train_on_prompt=cfg.train_on_prompt,
        template=cfg.template,
        skip_bad_lines=cfg.skip_bad_lines,
        max_samples=cfg.max_samples,
        dataset_dir=cfg.dataset_dir,
    )


def loraplus_ratio(cfg: TrainConfig) -> float | None:
    """``loraplus_lr_ratio`` from the config, else the member's own (``loraplus`` sets 16)."""
    from lorafam.family import MEMBERS

    if cfg.loraplus_lr_ratio is not None:
        return cfg.loraplus_lr_ratio
    return MEMBERS[cfg.method].train_options.get("loraplus_ratio")


def build_model(cfg: TrainConfig, device: torch.device | str | None = None) -> tuple[nn.Module, Any]:
    """Load the base model and tokenizer, attach the member's adapter (trainable), apply bf16/checkpointing."""
    import lorafam as lf
    from lorafam.core.precision import cast_frozen

    acfg = adapter_config(cfg)
    tok = lf.load_tokenizer(cfg.model_name_or_path)
    if hasattr(acfg, "resolve"):  # aLoRA: an invocation string becomes token ids with this tokenizer
        try:
            acfg = acfg.resolve(tok)
        except ValueError as exc:
            raise ConfigError(f"method_args: {exc}") from exc
    model = lf.load_model(cfg.model_name_or_path, device=device)
    lf.attach(model, acfg)
    if cfg.bf16:
        cast_frozen(model, torch.bfloat16)
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            raise ConfigError(f"gradient_checkpointing: {type(model).__name__} does not support it")
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
    model.train()
    return model, tok
