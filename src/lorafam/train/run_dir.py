"""A run's folder and its side effects: refusing to mix runs, checkpoints of the running state, the stop on a
non-finite loss, and the progress bar."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorafam.train import distributed
from lorafam.train.checkpointing import latest_checkpoint, rng_state, save_checkpoint
from lorafam.train.config import TrainConfig
from lorafam.train.metrics import MetricsLog

_RUN_FILES = (
    "metrics.jsonl", "metrics.csv", "loss.png", "run_config.yaml", "train_results.json", "trainer_state.json",
    "adapter", "adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors",
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "chat_template.jinja", "runs", ".final-tmp",
)  # fmt: skip


class TrainingError(RuntimeError):
    """The run cannot start or had to stop; the message says why and what was kept."""


class NonFiniteLossError(TrainingError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is kept."""


def prepare_output_dir(cfg: TrainConfig) -> Path | None:
    """Refuse to mix runs; returns the checkpoint to resume from (None = fresh start)."""
    out = Path(cfg.output_dir)
    resume = cfg.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() not in ("true", "false", ""):
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise TrainingError(f"resume_from_checkpoint={resume!r}: not a complete checkpoint folder")
        return path
    if resume is True or (isinstance(resume, str) and resume.lower() == "true"):
        found = latest_checkpoint(out)
        if found is not None:
            return found
        return None  # nothing to resume yet: start at step 0 in the same folder
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite_output_dir:
            raise TrainingError(
                f"output_dir={out} is not empty (it holds another run). Set overwrite_output_dir: true to "
                "replace that run, resume_from_checkpoint: true to continue it, or pick another output_dir"
            )
        for p in out.iterdir():
            if p.name in _RUN_FILES or p.name.startswith("checkpoint-") or p.name.startswith(".checkpoint-"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    return None


def stop(log: MetricsLog, step: int, what: str, last_ckpt: str | None) -> None:
    kept = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written before it"
    msg = (
        f"training stopped at step {step}: {what}. Nothing after it was saved; {kept}. Lower learning_rate "
        "(or check the data), then resume with resume_from_checkpoint: true"
    )
    log.write({"current_steps": step, "stopped": what})
    log.write_csv()
    raise NonFiniteLossError(msg)


def save_state(
    cfg: TrainConfig,
    info: distributed.DistInfo,
    out: Path,
    done: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    callbacks: list,
    tokens_seen: int,
    loss_curve: list,
    eval_curve: list,
    spe: int,
    log_history: list | None = None,
    max_steps: int | None = None,
) -> str | None:
    """Gather every rank's RNG state and write ``checkpoint-<done>`` from rank 0; returns its path (rank 0)."""
    states = [rng_state()]
    if info.enabled:
        gathered: list[Any] = [None] * info.world
        torch.distributed.all_gather_object(gathered, states[0])
        states = gathered
    path = None
    if info.is_main:
        tstate = {
            "global_step": done,
            "epoch": done // spe,
            "batch_in_epoch": done % spe,
            "tokens_seen": tokens_seen,
            "loss_curve": loss_curve,
            "eval_curve": eval_curve,
            "world_size": info.world,
            # Hugging Face Trainer's own keys, so tools that read HF checkpoints find them
            "max_steps": max_steps,
            "log_history": list(log_history or []),
        }
        cb_state = {f"{i}:{cb.name}": cb.state_dict() for i, cb in enumerate(callbacks)}
        path = str(save_checkpoint(out, done, model, optimizer, scheduler, tstate, cb_state, states,
                                   cfg.save_total_limit))  # fmt: skip
    distributed.barrier(info)
    return path


def progress_bar(console: Any, disabled: bool):  # -> rich.progress.Progress
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disabled,
    )
