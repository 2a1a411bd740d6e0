"""Keys from other trainers' configs (LLaMA-Factory, Hugging Face ``TrainingArguments``, axolotl) and what each
means here.

A config written for another tool should load as its users expect: a key that means the same thing is mapped to
our name (``alias``), a key whose job is done differently here (or not needed) is accepted and a one-line note
says why it changes nothing (``note``), and a key whose value would change the result in a way lorafam cannot
honour is refused with the reason (``refuse`` unless the value is a neutral one). The table is curated: it lists
what those tools' example configs and documentation use, each with its reason in our own words.

Each entry is ``key → Foreign``; :func:`translate` applies one entry and returns ``(canonical updates, note)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LF = "LLaMA-Factory"
HF = "HF TrainingArguments"
AX = "axolotl"

_TEXT_ONLY = "lorafam trains text-only causal LMs; there are no images, videos or audio to size"
_ONE_PROCESS_DATA = "tokenisation and batching run in the training process (a few seconds for datasets this size)"
_LAUNCHER = "processes are started by torchrun (`lorafam train --nproc N`), not by the config"


class ForeignKeyError(ValueError):
    """A foreign key whose value cannot be honoured here."""


@dataclass(frozen=True)
class Foreign:
    """One foreign key.

    ``kind``: ``alias`` (same meaning, our name is ``target``), ``note`` (accepted; ``why`` says why it changes
    nothing; values outside ``neutral`` are refused when ``neutral`` is set), ``refuse`` (accepted only with a
    ``neutral`` value, else an error giving ``why``), ``map`` (``fn(value)`` returns canonical updates).
    """

    origin: str
    kind: str
    why: str = ""
    target: str | None = None
    neutral: tuple[Any, ...] | None = None
    fn: Callable[[Any], dict[str, Any]] | None = field(default=None, compare=False)

    def translate(self, key: str, value: Any) -> tuple[dict[str, Any], str | None]:
        """Canonical updates and an optional note; raises :class:`ForeignKeyError` for a refused value."""
        if self.kind == "alias":
            assert self.target is not None
            return {self.target: value}, None
        if self.kind == "map":
            assert self.fn is not None
            return self.fn(value), None
        neutral = self.neutral
        if neutral is not None and not _is_neutral(value, neutral):
            shown = ", ".join(repr(v) for v in neutral)
            raise ForeignKeyError(f"{key}={value!r} ({self.origin}) cannot be honoured here: {self.why} "
                                  f"(accepted values: {shown}, or remove the key)")  # fmt: skip
        if self.kind == "refuse":
            return {}, None
        return {}, f"{key} ({self.origin}) is ignored: {self.why}"


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    for n in neutral:
        if value is n or (type(value) is type(n) and value == n):
            return True
        if isinstance(value, str) and isinstance(n, str) and value.lower() == n.lower():
            return True
    return False


def _target_linear(value: Any) -> dict[str, Any]:
    if value is True:
        return {"lora_target": "all"}
    if value in (False, None):
        return {}
    raise ForeignKeyError(f"lora_target_linear={value!r}: expected true or false")


def _load_in_4bit(value: Any) -> dict[str, Any]:
    if value is True:
        return {"quantization_bit": 4}
    if value in (False, None):
        return {}
    raise ForeignKeyError(f"load_in_4bit={value!r}: expected true or false")


def _axolotl_datasets(value: Any) -> dict[str, Any]:
    """axolotl's ``datasets: [{path: file, type: alpaca|chat_template|sharegpt|completion}]`` → ``dataset``."""
    if not isinstance(value, list):
        raise ForeignKeyError("datasets (axolotl) must be a list of {path: ..., type: ...} entries")
    paths = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            paths.append(item)
            continue
        if not isinstance(item, dict) or "path" not in item:
            raise ForeignKeyError(f"datasets[{i}] (axolotl): expected a mapping with a 'path'")
        kind = item.get("type")
        if kind not in (None, "alpaca", "chat_template", "sharegpt", "completion", "pretrain"):
            raise ForeignKeyError(
                f"datasets[{i}].type={kind!r} (axolotl): lorafam detects alpaca, messages/chat_template, "
                "sharegpt, prompt/completion and text from the fields; other prompt strategies are not supported"
            )
        extra = sorted(set(item) - {"path", "type", "split", "ds_type", "data_files"})
        if extra:
            raise ForeignKeyError(f"datasets[{i}] (axolotl): keys {extra} are not supported (path and type are)")
        paths.append(item.get("data_files") or item["path"])
    return {"dataset": paths}


FOREIGN: dict[str, Foreign] = {
    # -- axolotl (and others) spelling the same setting differently -----------------------------------------
    "base_model": Foreign(AX, "alias", target="model_name_or_path"),
    "lora_r": Foreign(AX, "alias", target="lora_rank"),
    "lora_target_modules": Foreign(AX, "alias", target="lora_target"),
    "train_on_inputs": Foreign(AX, "alias", target="train_on_prompt"),
    "sample_packing": Foreign(AX, "alias", target="packing"),
    "sequence_len": Foreign(AX, "alias", target="cutoff_len"),
    "micro_batch_size": Foreign(AX, "alias", target="per_device_train_batch_size"),
    "num_epochs": Foreign(AX, "alias", target="num_train_epochs"),
    "val_set_size": Foreign(AX, "alias", target="val_size"),
    "lr_scheduler": Foreign(AX, "alias", target="lr_scheduler_type"),
    "optimizer": Foreign(AX, "alias", target="optim"),
    "peft_use_dora": Foreign(AX, "alias", target="use_dora"),
    "peft_use_rslora": Foreign(AX, "alias", target="use_rslora"),
    "lora_model_dir": Foreign(AX, "alias", target="adapter_name_or_path"),
    "chat_template": Foreign(AX, "alias", target="template"),
    "eval_batch_size": Foreign(AX, "alias", target="per_device_eval_batch_size"),
    "lora_target_linear": Foreign(AX, "map", fn=_target_linear),
    "load_in_4bit": Foreign(AX, "map", fn=_load_in_4bit),
    "datasets": Foreign(AX, "map", fn=_axolotl_datasets),
    "test_datasets": Foreign(AX, "map", fn=lambda v: {"eval_dataset": _axolotl_datasets(v)["dataset"]}),
    "evals_per_epoch": Foreign(AX, "note", "use eval_steps, or eval_strategy: epoch for one evaluation per epoch"),
    "finetuning_type": Foreign(LF, "alias", target="member"),
    "method": Foreign("lorafam (older name)", "alias", target="member"),
    "evaluation_strategy": Foreign(HF, "alias", target="eval_strategy"),
    "disable_tqdm": Foreign(HF, "alias", target="disable_progress"),
    # -- LLaMA-Factory keys whose job is done differently here ----------------------------------------------
    "loraplus_lr_embedding": Foreign(
        LF,
        "note",
        "no lorafam member adapts an embedding layer, so LoRA+'s embedding learning rate has nothing to set",
    ),
    "trust_remote_code": Foreign(
        LF, "note", "models load through the classes transformers ships; no model repository code is run"
    ),
    "preprocessing_num_workers": Foreign(LF, "note", _ONE_PROCESS_DATA),
    "dataloader_num_workers": Foreign(HF, "note", _ONE_PROCESS_DATA),
    "dataloader_pin_memory": Foreign(HF, "note", "batches are small and moved to the device per micro-batch"),
    "dataloader_drop_last": Foreign(HF, "note", "the last incomplete global batch of an epoch is always skipped"),
    "save_only_model": Foreign(
        HF, "note", "checkpoints always keep optimizer, scheduler and RNG state so that a resumed run is exact"
    ),
    "ddp_timeout": Foreign(HF, "note", "the process group uses torch's default timeout"),
    "tokenized_path": Foreign(
        LF, "note", "the dataset is tokenised on every run; `lorafam preprocess` prints what training sees"
    ),
    "overwrite_cache": Foreign(LF, "note", "no tokenised cache is kept"),
    "image_max_pixels": Foreign(LF, "note", _TEXT_ONLY),
    "image_min_pixels": Foreign(LF, "note", _TEXT_ONLY),
    "video_max_pixels": Foreign(LF, "note", _TEXT_ONLY),
    "video_min_pixels": Foreign(LF, "note", _TEXT_ONLY),
    "video_fps": Foreign(LF, "note", _TEXT_ONLY),
    "video_maxlen": Foreign(LF, "note", _TEXT_ONLY),
    "freeze_vision_tower": Foreign(LF, "note", _TEXT_ONLY),
    "freeze_multi_modal_projector": Foreign(LF, "note", _TEXT_ONLY),
    "freeze_language_model": Foreign(
        LF, "note", "text-only models: the language model is what is trained", neutral=(False,)
    ),
    "pref_beta": Foreign(LF, "note", "used by stage dpo/kto only; lorafam trains sft and pt"),
    "pref_loss": Foreign(LF, "note", "used by stage dpo/kto only; lorafam trains sft and pt"),
    "pref_ftx": Foreign(LF, "note", "used by stage dpo/kto only; lorafam trains sft and pt"),
    "deepspeed": Foreign(
        LF,
        "note",
        "DeepSpeed is not used; data parallelism is DDP under torchrun, and `fsdp: true` shards the frozen base",
    ),
    "ray_num_workers": Foreign(LF, "note", _LAUNCHER),
    "ray_init_kwargs": Foreign(LF, "note", _LAUNCHER),
    "double_quantization": Foreign(
        LF,
        "note",
        "lorafam's NF4 always double-quantises the block scales (QLoRA's recipe)",
        neutral=(True, False),
    ),
    "quantization_type": Foreign(LF, "note", "NF4 is the 4-bit type here", neutral=("nf4",)),
    "flash_attn": Foreign(
        LF,
        "note",
        "attention is transformers' default implementation for the model (sdpa on this torch)",
        neutral=("auto", "sdpa", "disabled", "fa2"),
    ),
    "use_fast_tokenizer": Foreign(LF, "note", "transformers picks the tokenizer class from the model folder"),
    "print_param_status": Foreign(LF, "note", "the trainable-parameter line is always printed"),
    "enable_thinking": Foreign(LF, "note", "the chat template is rendered as the tokenizer defines it"),
    "mix_strategy": Foreign(LF, "note", "datasets are concatenated", neutral=("concat",)),
    "infer_backend": Foreign(
        LF,
        "note",
        "inference is transformers' generate (vLLM serving is a separate tool)",
        neutral=("huggingface", "hf"),
    ),
    "use_unsloth": Foreign(LF, "refuse", "Unsloth kernels are not used here", neutral=(False,)),
    "streaming": Foreign(LF, "refuse", "datasets are read whole", neutral=(False,)),
    "shift_attn": Foreign(
        LF, "refuse", "S²-Attn is the LongLoRA member here: set member: longlora", neutral=(False,)
    ),
    "pissa_init": Foreign(LF, "refuse", "PiSSA initialisation is not a member here", neutral=(False,)),
    "neftune_noise_alpha": Foreign(LF, "refuse", "NEFTune embedding noise is not implemented", neutral=(None, 0)),
    "rope_scaling": Foreign(LF, "refuse", "RoPE scaling is not applied by lorafam", neutral=(None,)),
    "create_new_adapter": Foreign(
        LF,
        "refuse",
        "adapter_name_or_path continues training that adapter; a second adapter is not stacked",
        neutral=(False,),
    ),  # fmt: skip
    # -- Hugging Face TrainingArguments ---------------------------------------------------------------------
    "fp16": Foreign(HF, "refuse", "fp16 mixed precision is not supported; use bf16: true", neutral=(False,)),
    "tf32": Foreign(HF, "note", "TF32 matmuls are a CUDA setting; torch's default is used"),
    "logging_first_step": Foreign(HF, "note", "the first logging line is at logging_steps"),
    "logging_strategy": Foreign(HF, "note", "logging is every logging_steps", neutral=("steps",)),
    "save_safetensors": Foreign(HF, "note", "weights are always written as safetensors", neutral=(True,)),
    "save_on_each_node": Foreign(HF, "note", "rank 0 writes every file", neutral=(False,)),
    "run_name": Foreign(HF, "note", "the run is named by its output_dir"),
    "remove_unused_columns": Foreign(HF, "note", "only the fields of the detected format are read"),
    "label_names": Foreign(HF, "note", "labels are built from the chat template (prompt tokens -100)"),
    "include_num_input_tokens_seen": Foreign(HF, "note", "metrics.jsonl always carries total_tokens"),
    "local_rank": Foreign(HF, "note", "the rank comes from torchrun's environment"),
    "ddp_backend": Foreign(HF, "note", "gloo on CPU, NCCL on CUDA", neutral=(None, "gloo", "nccl")),
    "push_to_hub": Foreign(HF, "refuse", "nothing is uploaded; copy output_dir yourself", neutral=(False,)),
    "hub_model_id": Foreign(HF, "note", "nothing is uploaded"),
    "hub_token": Foreign(HF, "note", "nothing is uploaded"),
    "hub_strategy": Foreign(HF, "note", "nothing is uploaded"),
    "label_smoothing_factor": Foreign(HF, "refuse", "the loss is plain token NLL", neutral=(0, 0.0, None)),
    "load_best_model_at_end": Foreign(
        HF,
        "refuse",
        "the final adapter is the last step's; checkpoints are kept to pick another",
        neutral=(False,),
    ),
    "metric_for_best_model": Foreign(HF, "note", "no best-model selection (see load_best_model_at_end)"),
    "greater_is_better": Foreign(HF, "note", "no best-model selection (see load_best_model_at_end)"),
    "eval_accumulation_steps": Foreign(HF, "note", "evaluation keeps only running sums, never logits"),
    "eval_on_start": Foreign(
        HF, "refuse", "evaluation runs at eval_steps / epoch ends and at the end", neutral=(False,)
    ),
    "group_by_length": Foreign(HF, "refuse", "batches follow a seeded shuffle (resumable)", neutral=(False,)),
    "gradient_checkpointing_kwargs": Foreign(HF, "note", "checkpointing is always non-reentrant here"),
    "data_seed": Foreign(HF, "note", "the data order follows `seed`"),
    "full_determinism": Foreign(HF, "note", "runs are seeded; see docs/trainer.md on resume and DDP"),
    "optim_args": Foreign(HF, "note", "use adam_beta1 / adam_beta2 / adam_epsilon / weight_decay"),
    "fsdp_config": Foreign(HF, "note", "FSDP2 shards every decoder block and the root; no other options"),
    "accelerator_config": Foreign(HF, "note", "accelerate is not used"),
    "use_cpu": Foreign(HF, "map", fn=lambda v: {"device": "cpu"} if v else {}),
    "no_cuda": Foreign(HF, "map", fn=lambda v: {"device": "cpu"} if v else {}),
    # -- axolotl keys whose job is done differently here ----------------------------------------------------
    "load_in_8bit": Foreign(
        AX, "refuse", "8-bit bases are not supported; load_in_4bit gives NF4", neutral=(False,)
    ),
    "strict": Foreign(AX, "note", "unknown keys are always an error here (with the closest valid name)"),
    "pad_to_sequence_len": Foreign(AX, "note", "batches are padded to their longest row"),
    "flash_attention": Foreign(AX, "note", "attention is transformers' default implementation (sdpa)"),
    "sdp_attention": Foreign(AX, "note", "attention is transformers' default implementation (sdpa)"),
    "xformers_attention": Foreign(AX, "note", "attention is transformers' default implementation (sdpa)"),
    "dataset_prepared_path": Foreign(AX, "note", "no tokenised cache is kept"),
    "dataset_processes": Foreign(AX, "note", _ONE_PROCESS_DATA),
    "shuffle_merged_datasets": Foreign(AX, "note", "examples are shuffled per epoch from the seed"),
    "saves_per_epoch": Foreign(AX, "note", "use save_steps or save_strategy: epoch"),
    "loss_watchdog_threshold": Foreign(AX, "note", "a NaN/inf loss or gradient always stops the run"),
    "loss_watchdog_patience": Foreign(AX, "note", "a NaN/inf loss or gradient always stops the run"),
    "early_stopping_patience": Foreign(AX, "refuse", "no early stopping", neutral=(None,)),
    "wandb_project": Foreign(AX, "note", "Weights & Biases is not used; metrics.jsonl (+ report_to: tensorboard)"),
    "wandb_entity": Foreign(AX, "note", "Weights & Biases is not used"),
    "wandb_name": Foreign(AX, "note", "Weights & Biases is not used"),
    "wandb_watch": Foreign(AX, "note", "Weights & Biases is not used"),
    "wandb_log_model": Foreign(AX, "note", "Weights & Biases is not used"),
    "special_tokens": Foreign(AX, "refuse", "the tokenizer's vocabulary is not changed", neutral=(None, {})),
    "lora_modules_to_save": Foreign(AX, "alias", target="additional_target"),
    "lora_fan_in_fan_out": Foreign(AX, "note", "the orientation follows each module (GPT-2 Conv1D is handled)"),
    "debug": Foreign(AX, "note", "use `lorafam preprocess CONFIG --debug` to see tokens and labels"),
}


def origin_table() -> list[tuple[str, str, str, str]]:
    """(key, origin, what it does here, why) rows, for the docs and ``lorafam train --explain-keys``."""
    rows = []
    for key, f in sorted(FOREIGN.items()):
        what = {"alias": f"same as {f.target}", "map": "translated", "note": "accepted, ignored",
                "refuse": "accepted only as " + ", ".join(map(repr, f.neutral or ()))}[f.kind]  # fmt: skip
        rows.append((key, f.origin, what, f.why))
    return rows
