"""The training configuration: one YAML file with LLaMA-Factory's key names, validated by pydantic.

``load_config(path, overrides)`` reads the file, applies ``key=value`` overrides (dotted keys reach into
``method_args``), maps axolotl spellings through :data:`ALIASES`, rejects unknown keys with the closest valid
name and rejects conflicting keys with a message naming both. Member-specific fields (AdaLoRA's ``init_rank``...)
go in ``method_args`` and are checked by the member's own config class, so new members need no change here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorafam.core.config import closest

# axolotl (and other) spellings → our canonical LLaMA-Factory name. ``adapter`` is handled on its own.
ALIASES: dict[str, str] = {
    "base_model": "model_name_or_path",
    "finetuning_type": "method",
    "lora_r": "lora_rank",
    "lora_target_modules": "lora_target",
    "train_on_inputs": "train_on_prompt",
    "sample_packing": "packing",
    "sequence_len": "cutoff_len",
    "micro_batch_size": "per_device_train_batch_size",
    "num_epochs": "num_train_epochs",
    "val_set_size": "val_size",
    "lr_scheduler": "lr_scheduler_type",
    "peft_use_dora": "use_dora",
    "peft_use_rslora": "use_rslora",
}
# keys LLaMA-Factory files carry that change nothing here (accepted only with these values)
_ACCEPTED_FIXED: dict[str, tuple[Any, ...]] = {
    "stage": ("sft", "pt"),
    "do_train": (True,),
    "report_to": ("none", None),
    "quantization_method": ("bnb", "torchao", "nf4"),
}


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


class TrainConfig(BaseModel):
    """Every key ``lorafam train`` understands (LLaMA-Factory names; see ``docs/trainer.md``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # model
    model_name_or_path: str | None = None
    quantization_bit: Literal[4] | None = None
    # method
    method: str = "lora"
    method_args: dict[str, Any] = Field(default_factory=dict)
    lora_rank: int = Field(8, gt=0)
    lora_alpha: float | None = None
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target: str | list[str] = "all"
    use_rslora: bool = False
    use_dora: bool = False
    loraplus_lr_ratio: float | None = Field(None, gt=0)
    loraplus_lr_embedding: float = 1e-6
    # dataset
    dataset: list[str] = Field(default_factory=list)
    template: str = "auto"
    cutoff_len: int = Field(1024, gt=1)
    train_on_prompt: bool = False
    packing: bool = False
    val_size: float = Field(0.0, ge=0.0)
    max_samples: int | None = Field(None, gt=0)
    skip_bad_lines: bool = False
    # train
    per_device_train_batch_size: int = Field(1, gt=0)
    per_device_eval_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optim: Literal["adamw", "adam", "sgd"] = "adamw"
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    warmup_steps: int = Field(0, ge=0)
    num_train_epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, gt=0)
    max_grad_norm: float | None = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    loss_chunk_size: int = Field(512, gt=0)
    ddp_find_unused_parameters: bool = False
    num_threads: int | None = Field(None, gt=0)
    device: str | None = None
    # eval
    eval_steps: int | None = Field(None, gt=0)
    # output
    logging_steps: int = Field(10, gt=0)
    save_steps: int | None = Field(500, ge=0)
    save_total_limit: int | None = Field(None, gt=0)
    output_dir: str = "saves/lorafam-run"
    overwrite_output_dir: bool = False
    resume_from_checkpoint: bool | str | None = None
    seed: int = 42
    plot_loss: bool = True
    disable_progress: bool = False

    @field_validator("dataset", mode="before")
    @classmethod
    def _split_dataset(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("lora_target", mode="before")
    @classmethod
    def _split_target(cls, v: Any) -> Any:
        if isinstance(v, str) and "," in v:
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from lorafam.family import MEMBERS

        if v not in MEMBERS:
            raise ValueError(f"unknown member {v!r}.{closest(v, list(MEMBERS))} Valid: {', '.join(MEMBERS)}")
        return v

    @model_validator(mode="after")
    def _conflicts(self) -> TrainConfig:
        if self.max_steps is not None and self.num_train_epochs is not None:
            raise ValueError(
                "'max_steps' and 'num_train_epochs' are both set; set only one of them "
                "(max_steps counts optimizer steps, num_train_epochs passes over the data)"
            )
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("'warmup_steps' and 'warmup_ratio' are both set; set only one of them")
        if self.use_dora and self.method not in ("lora", "dora"):
            raise ValueError(f"'use_dora' is only valid with method: lora (got method: {self.method})")
        if self.loraplus_lr_ratio is not None and self.method not in ("lora", "loraplus", "rslora", "qlora"):
            raise ValueError(
                f"'loraplus_lr_ratio' is a LoRA+ option for LoRA-style members, not for method: {self.method}"
            )
        return self

    # -- derived -------------------------------------------------------------------------------------------------
    @property
    def epochs(self) -> float:
        return self.num_train_epochs if self.num_train_epochs is not None else 3.0

    def targets(self) -> list[str] | str:
        """``lora_target`` in the adapter config's terms (``all`` → ``"all-linear"``)."""
        t = self.lora_target
        if isinstance(t, str):
            return "all-linear" if t in ("all", "all-linear") else ([t] if t.isidentifier() else t)
        return list(t)

    def warmup_for(self, total_steps: int) -> int:
        return self.warmup_steps or math.ceil(self.warmup_ratio * total_steps)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# -- loading -----------------------------------------------------------------------------------------------------
def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["a=1", "method_args.init_rank=12"]`` → ``{"a": 1, "method_args": {"init_rank": 12}}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a mapping")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def canonicalise(raw: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Apply the alias table and axolotl's ``adapter`` key; unknown keys raise with the closest valid name."""
    from lorafam.family import MEMBERS

    valid = list(TrainConfig.model_fields)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _ACCEPTED_FIXED:
            if value not in _ACCEPTED_FIXED[key]:
                choices = ", ".join(map(str, _ACCEPTED_FIXED[key]))
                raise ConfigError(f"{source}: {key}={value!r} is not supported here (supported: {choices})")
            continue
        if key == "adapter":
            continue
        name = ALIASES.get(key, key)
        if name not in valid:
            raise ConfigError(
                f"{source}: unknown key {key!r}.{closest(key, valid + list(ALIASES))} "
                f"Valid keys: {', '.join(valid)} (aliases: {', '.join(ALIASES)})"
            )
        if name in out and out[name] != value:
            first = next(k for k in raw if ALIASES.get(k, k) == name)
            raise ConfigError(f"{source}: {first!r} and {key!r} are the same setting with different values")
        out[name] = value
    adapter = raw.get("adapter")
    if adapter is not None:
        if adapter not in ("lora", "qlora"):
            raise ConfigError(f"{source}: adapter={adapter!r}; expected 'lora' or 'qlora'")
        if adapter == "qlora":
            bit = out.get("quantization_bit")
            if bit not in (None, 4):
                raise ConfigError(
                    f"{source}: 'adapter: qlora' needs 4-bit NF4 but 'quantization_bit' is {bit}; "
                    "remove quantization_bit or set it to 4"
                )
            out["quantization_bit"] = 4
            if "qlora" in MEMBERS and out.get("method", "lora") == "lora":
                out["method"] = "qlora"
    return out


def _format_validation(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {loc}: {msg}" if loc != "config" else f"{source}: {msg}")
    return "\n".join(lines)


def make_config(
    raw: dict[str, Any], source: str = "config", overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Validate a dict into a :class:`TrainConfig`; ``overrides`` (also aliased) win over ``raw``."""
    merged = canonicalise(raw, source)
    if overrides:
        merged = _merge(merged, canonicalise(overrides, "overrides"))
    try:
        return TrainConfig(**merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (or nothing, when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping of keys to values at the top level")
        source = str(p)
    return make_config(raw, source, parse_overrides(overrides or []))
