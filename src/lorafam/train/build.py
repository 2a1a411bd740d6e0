"""Turn a :class:`TrainConfig` into a model with its adapter attached (and the tokenizer)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lorafam.core.checkpoint import load_adapter
from lorafam.core.config import AdapterConfig
from lorafam.core.inject import attach, merge_and_unload
from lorafam.helpers import check_keys
from lorafam.models import load_model, load_tokenizer
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
    if cfg.additional_target:  # LLaMA-Factory: extra modules trained in full → PEFT's modules_to_save
        kw["modules_to_save"] = list(cfg.additional_target)
    return kw


def adapter_config(cfg: TrainConfig) -> AdapterConfig:
    """The member's adapter config: :func:`adapter_fields` plus ``method_args``, through
    :meth:`lorafam.family.FamilyMember.make_config`. ``use_dora`` picks the member's DoRA variant."""
    from lorafam.family import MEMBERS, METHODS

    name = MEMBERS[cfg.member].dora_variant or cfg.member if cfg.use_dora else cfg.member
    member = MEMBERS[name]
    cls = METHODS[member.method].config_cls
    kw = adapter_fields(cfg)
    if "use_rslora" in kw and "use_rslora" not in cls.field_names():
        raise ConfigError(f"'use_rslora' is not an option of member: {cfg.member} ({cls.__name__})")
    try:
        check_keys(
            cfg.method_args, cls.field_names(), f"method_args ({cls.__name__}, member: {cfg.member})", "field"
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return member.make_config({**kw, **cfg.method_args})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"member {cfg.member}: {exc}") from exc


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
    if cfg.member not in MEMBERS:  # member: full / freeze
        return None
    return MEMBERS[cfg.member].train.loraplus_ratio


def freeze_for_training(model: nn.Module, cfg: TrainConfig) -> None:
    """``member: full`` trains every parameter; ``member: freeze`` (LLaMA-Factory's freeze tuning) trains only the
    last ``freeze_trainable_layers`` decoder layers (the first ones when negative), restricted to the module
    names in ``freeze_trainable_modules`` (``all`` = every parameter of those layers)."""
    if cfg.member == "full":
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ConfigError(f"member: freeze needs a decoder with model.layers; {type(model).__name__} has none")
    n = cfg.freeze_trainable_layers
    if n == 0 or abs(n) > len(layers):
        raise ConfigError(f"freeze_trainable_layers={n}: the model has {len(layers)} decoder layers")
    chosen = list(layers)[-n:] if n > 0 else list(layers)[:-n]
    mods = cfg.freeze_trainable_modules
    names = None if mods == "all" else ([m.strip() for m in mods.split(",")] if isinstance(mods, str) else mods)
    found = False
    for layer in chosen:
        for pname, p in layer.named_parameters():
            if names is None or any(part in names for part in pname.split(".")):
                p.requires_grad_(True)
                found = True
    if not found:
        raise ConfigError(f"freeze_trainable_modules={mods!r} matches no parameter of the chosen layers")


def _load_adapters(model: nn.Module, cfg: TrainConfig) -> None:
    """``adapter_name_or_path``: every adapter but the last is merged into the base (LLaMA-Factory's rule); the
    last one is loaded trainable and training continues from it (its own config decides rank, targets...)."""
    *merged, last = cfg.adapter_name_or_path
    for path in merged:
        load_adapter(model, path, name="merged")
        merge_and_unload(model)
    load_adapter(model, last, trainable=True)


def build_model(cfg: TrainConfig, device: torch.device | str | None = None) -> tuple[nn.Module, Any]:
    """Load the base model and tokenizer, attach the member's adapter (trainable) or continue from
    ``adapter_name_or_path``, or unfreeze the base (``member: full`` / ``freeze``); apply bf16/checkpointing."""
    from lorafam.core.precision import cast_frozen

    tok = load_tokenizer(cfg.model_name_or_path)
    acfg = None
    if cfg.is_adapter_method and not cfg.adapter_name_or_path:
        acfg = adapter_config(cfg)
        try:  # aLoRA: an invocation string becomes token ids with this tokenizer (others: the config itself)
            acfg = acfg.resolve(tok)
        except ValueError as exc:
            raise ConfigError(f"method_args: {exc}") from exc
    model = load_model(cfg.model_name_or_path, device=device)
    if acfg is not None:
        attach(model, acfg)
    elif cfg.adapter_name_or_path:
        try:
            _load_adapters(model, cfg)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise ConfigError(f"adapter_name_or_path: {exc}") from exc
    else:
        freeze_for_training(model, cfg)
    if cfg.bf16 and cfg.is_adapter_method:
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
