"""Turn a :class:`TrainConfig` into a model with its adapter attached (and the tokenizer)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lorafam.core.config import AdapterConfig
from lorafam.helpers import check_keys
from lorafam.train.config import ConfigError, TrainConfig


def adapter_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The adapter config fields the user set in the YAML (``model_fields_set``), in the config's own names.

    Unset generic keys are left out, so the member's preset and its config class decide (AdaLoRA's initial rank
    12, LongLoRA's q/k/v/o targets). ``lora_alpha`` defaults to 2 × ``lora_rank`` when only the rank is set
    (LLaMA-Factory's rule); ``quantization_bit: 4`` stores the base in NF4 (QLoRA under any member).
    """
    given = cfg.model_fields_set
    kw: dict[str, Any] = {}
    if "lora_rank" in given:
        kw["rank"] = cfg.lora_rank
    if cfg.lora_alpha is not None:
        kw["alpha"] = cfg.lora_alpha
    elif "lora_rank" in given:
        kw["alpha"] = 2.0 * cfg.lora_rank
    if "lora_dropout" in given:
        kw["dropout"] = cfg.lora_dropout
    if "lora_target" in given:
        kw["targets"] = cfg.targets()
    if cfg.use_rslora:
        kw["use_rslora"] = True
    if cfg.quantization_bit == 4:
        kw["quantize"] = "nf4"
        kw["compute_dtype"] = "bfloat16" if cfg.bf16 else "float32"
    return kw


def adapter_config(cfg: TrainConfig) -> AdapterConfig:
    """The member's adapter config: :func:`adapter_fields` plus ``method_args``, through
    :meth:`lorafam.family.FamilyMember.make_config`. ``use_dora`` picks the member's DoRA variant."""
    from lorafam.family import MEMBERS, METHODS

    name = MEMBERS[cfg.method].dora_variant or cfg.method if cfg.use_dora else cfg.method
    member = MEMBERS[name]
    cls = METHODS[member.method].config_cls
    kw = adapter_fields(cfg)
    if "use_rslora" in kw and "use_rslora" not in cls.field_names():
        raise ConfigError(f"'use_rslora' is not an option of method: {cfg.method} ({cls.__name__})")
    try:
        check_keys(
            cfg.method_args, cls.field_names(), f"method_args ({cls.__name__}, method: {cfg.method})", "field"
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return member.make_config({**kw, **cfg.method_args})
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
    return MEMBERS[cfg.method].train.loraplus_ratio


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
