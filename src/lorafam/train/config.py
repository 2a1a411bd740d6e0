"""The training configuration: one YAML file with LLaMA-Factory's key names, validated by pydantic.

``load_config(path, overrides)`` reads the file, applies ``key=value`` overrides (dotted keys reach into
``method_args``), maps foreign spellings to ours, rejects unknown keys with the closest valid name and
rejects conflicting keys with a message naming both (the key layer: :mod:`lorafam.train.keys`). Member-specific fields (AdaLoRA's ``init_rank``...)
go in ``method_args`` and are checked by the member's own config class, so new members need no change here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from lorafam.family import MEMBERS, METHODS
from lorafam.helpers import closest, merge_dicts, read_yaml_mapping
from lorafam.train.keys import NEAR_MISS, ConfigError, canonicalise, parse_overrides

# Every lr_scheduler_type of transformers (transformers.SchedulerType; a test keeps the two lists equal).
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy",
)  # fmt: skip
# HF ``optim`` names (and our short ones) that lorafam builds; see lorafam.train.schedule.OPTIMIZERS.
OPTIMIZERS = ("adamw", "adam", "sgd", "adamw_torch", "adamw_torch_fused", "adafactor", "adagrad", "rmsprop")
# Methods that are not adapters: full fine-tuning and LLaMA-Factory's freeze (train the last layers only).
FULL_METHODS = ("full", "freeze")
REPORT_TO = ("none", "tensorboard")

GENERIC_ADAPTER_KEYS = frozenset({"lora_rank", "lora_alpha", "lora_dropout", "lora_target"})
"""Member-independent adapter keys; unset, each leaves the member's own default in place (train/build.py)."""


class TrainConfig(BaseModel):
    """Every key ``lorafam train`` understands (LLaMA-Factory names; see ``docs/trainer.md``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # model
    model_name_or_path: str | None = None
    adapter_name_or_path: list[str] = Field(default_factory=list)
    quantization_bit: Literal[4] | None = None
    # member (YAML also takes its older name `method` and LLaMA-Factory's `finetuning_type`)
    member: str = "lora"
    method_args: dict[str, Any] = Field(default_factory=dict)
    lora_rank: int = Field(8, gt=0)
    lora_alpha: float | None = None
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_target: str | list[str] = "all"
    use_rslora: bool = False
    use_dora: bool = False
    loraplus_lr_ratio: float | None = Field(None, gt=0)
    additional_target: list[str] = Field(default_factory=list)
    freeze_trainable_layers: int = 2
    freeze_trainable_modules: str | list[str] = "all"
    # dataset
    dataset: list[str] = Field(default_factory=list)
    dataset_dir: str = "data"
    eval_dataset: list[str] = Field(default_factory=list)
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
    optim: str = "adamw"
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict[str, Any] = Field(default_factory=dict)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    warmup_steps: int = Field(0, ge=0)
    num_train_epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, gt=0)
    max_grad_norm: float | None = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    torch_compile_backend: str = "inductor"
    torch_compile_mode: (
        Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None
    ) = None
    loss_chunk_size: int = Field(512, gt=0)
    ddp_find_unused_parameters: bool = False
    fsdp: bool = False
    num_threads: int | None = Field(None, gt=0)
    device: str | None = None
    # eval
    eval_strategy: Literal["no", "steps", "epoch"] | None = None
    eval_steps: int | None = Field(None, gt=0)
    # output
    logging_steps: int = Field(10, gt=0)
    save_strategy: Literal["no", "steps", "epoch"] = "steps"
    save_steps: int | None = Field(500, ge=0)
    save_total_limit: int | None = Field(None, gt=0)
    output_dir: str = "saves/lorafam-run"
    overwrite_output_dir: bool = False
    resume_from_checkpoint: bool | str | None = None
    seed: int = 42
    plot_loss: bool = True
    report_to: list[str] = Field(default_factory=lambda: ["none"])
    logging_dir: str | None = None
    disable_progress: bool = False

    _notes: list[str] = PrivateAttr(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """One line per accepted-but-ignored foreign key (and similar); printed at the start of a run."""
        return self._notes

    @field_validator("adapter_name_or_path", "eval_dataset", "additional_target", mode="before")
    @classmethod
    def _split_list(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to(cls, v: Any) -> Any:
        if v is None:
            return ["none"]
        items = [s.strip() for s in v.split(",")] if isinstance(v, str) else list(v)
        items = ["tensorboard" if i == "all" else i for i in items if i]
        for i in items:
            if i not in REPORT_TO:
                raise ValueError(
                    f"report_to={i!r} is not supported here (supported: {', '.join(REPORT_TO)}; metrics.jsonl "
                    "is always written and is the source of truth)"
                )
        return [i for i in items if i != "none"] or ["none"]

    @field_validator("bf16", mode="before")
    @classmethod
    def _bf16_auto(cls, v: Any) -> Any:
        if v == "auto":  # axolotl: bf16 where it is fast
            from lorafam.core.precision import native_bf16

            return native_bf16()
        return v

    @field_validator("fsdp", mode="before")
    @classmethod
    def _fsdp(cls, v: Any) -> Any:
        if v in (None, "", False):
            return False
        if v is True or (isinstance(v, str) and v.strip() in ("full_shard", "true")):
            return True
        raise ValueError(
            f"fsdp={v!r}: supported values are true / full_shard (FSDP2 fully_shard of every decoder block) or "
            "false; shard_grad_op, hybrid_shard and offload are not implemented"
        )

    @field_validator("optim")
    @classmethod
    def _optim(cls, v: str) -> str:
        if v not in OPTIMIZERS:
            why = (
                " (it needs bitsandbytes / GaLore / another package that lorafam does not use)"
                if any(t in v for t in ("8bit", "bnb", "paged", "galore", "lion", "lomo", "apollo", "ademamix"))
                else ""
            )
            near = closest(v, OPTIMIZERS, cutoff=NEAR_MISS)
            raise ValueError(f"optim={v!r} is not supported here{why}.{near} Supported: {', '.join(OPTIMIZERS)}")
        return v

    @field_validator("lr_scheduler_type")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        if v not in SCHEDULERS:
            near = closest(v, SCHEDULERS, cutoff=NEAR_MISS)
            raise ValueError(
                f"lr_scheduler_type={v!r} is not a transformers scheduler.{near} Valid: {', '.join(SCHEDULERS)}"
            )
        return v

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

    @field_validator("member")
    @classmethod
    def _known_member(cls, v: str) -> str:
        if v not in MEMBERS and v not in FULL_METHODS:
            valid = [*MEMBERS, *FULL_METHODS]
            raise ValueError(
                f"unknown member {v!r}.{closest(v, valid, cutoff=NEAR_MISS)} Valid: {', '.join(valid)}"
            )
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
        if self.torch_compile and self.fsdp:
            raise ValueError("'torch_compile' with 'fsdp' is not supported here (untested); set only one of them")
        member = MEMBERS.get(self.member)  # None: full fine-tuning
        variants = {m.dora_variant for m in MEMBERS.values() if m.dora_variant}
        if self.use_dora and (member is None or not (member.dora_variant or self.member in variants)):
            takes = sorted(n for n, m in MEMBERS.items() if m.dora_variant)
            raise ValueError(
                f"'use_dora' is only valid with member: {', '.join(takes)} (got member: {self.member})"
            )
        if self.loraplus_lr_ratio is not None and (member is None or not METHODS[member.method].loraplus):
            takes = ", ".join(n for n, m in MEMBERS.items() if METHODS[m.method].loraplus)
            raise ValueError(
                f"'loraplus_lr_ratio' needs an adapter with a B factor (member: {takes}), not member: {self.member}"
            )
        if self.member in FULL_METHODS and (self.quantization_bit or self.adapter_name_or_path):
            key = "quantization_bit" if self.quantization_bit else "adapter_name_or_path"
            raise ValueError(f"'{key}' needs an adapter member; member: {self.member} trains the base weights")
        if self.eval_strategy in ("steps", "epoch") and not (self.val_size or self.eval_dataset):
            raise ValueError(
                f"eval_strategy: {self.eval_strategy} needs evaluation data: set val_size or eval_dataset"
            )
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError(
                "eval_strategy: steps needs eval_steps (how many optimizer steps between evaluations)"
            )
        if self.lr_scheduler_type in ("reduce_lr_on_plateau", "greedy") and self.effective_eval_strategy == "no":
            raise ValueError(
                f"lr_scheduler_type: {self.lr_scheduler_type} steps on the evaluation loss: set eval_strategy "
                "(steps or epoch) and val_size or eval_dataset"
            )
        return self

    @property
    def effective_eval_strategy(self) -> str:
        """``eval_strategy``, defaulting as lorafam always did: ``steps`` when eval_steps is set, else ``no``."""
        if self.eval_strategy is not None:
            return self.eval_strategy
        return "steps" if self.eval_steps and (self.val_size or self.eval_dataset) else "no"

    @property
    def is_adapter_method(self) -> bool:
        return self.member not in FULL_METHODS

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
        """The resolved config; generic adapter keys the user did not set stay out, so that a re-run from this
        file still gets the member's own defaults (AdaLoRA's initial rank, LongLoRA's targets)."""
        unset = GENERIC_ADAPTER_KEYS - self.model_fields_set
        return yaml.safe_dump(self.model_dump(mode="json", exclude=unset), sort_keys=False, allow_unicode=True)


# -- loading -----------------------------------------------------------------------------------------------------
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
    notes: list[str] = []
    valid = list(TrainConfig.model_fields)
    merged = canonicalise(raw, valid, source, notes)
    if overrides:
        merged = merge_dicts(merged, canonicalise(overrides, valid, "overrides", notes))
    try:
        cfg = TrainConfig(**merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, source)) from None
    cfg._notes.extend(notes)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (or nothing, when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        p = Path(path)
        raw = read_yaml_mapping(p, str(p), ConfigError, missing="config file not found")
        source = str(p)
    return make_config(raw, source, parse_overrides(overrides or []))
