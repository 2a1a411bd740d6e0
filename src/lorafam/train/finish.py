"""The trainer's last phases: evaluation on the validation rows and the finish (the result files in Hugging Face
Trainer's layout). Each takes the run's state (``trainer._Run``) as it stands after the loop."""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorafam.train import distributed
from lorafam.train.metrics import plot_loss

if TYPE_CHECKING:
    from lorafam.train.trainer import _Run


@dataclass
class TrainResult:
    """What a finished run reports (also written to ``train_results.json``)."""

    output_dir: str
    steps: int
    final_loss: float
    loss_curve: list[tuple[int, float]]
    eval_curve: list[tuple[int, float]]
    seconds_per_step: float
    tokens_per_second: float
    trainable_params: int
    total_params: int
    adapter_dir: str | None
    peak_rss_mib: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


def evaluate(run: _Run) -> tuple[float, float]:
    """(mean token NLL, perplexity) over the validation rows, split across ranks."""
    from lorafam.data.dataset import collate
    from lorafam.train.loss import causal_lm_loss

    cfg, info, model = run.cfg, run.info, run.model
    sharded = cfg.fsdp and info.enabled  # every forward is collective: same number of batches on every rank
    model.eval()
    nll = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    mine = run.val_rows[info.rank :: info.world]
    bs = cfg.per_device_eval_batch_size
    n_batches = math.ceil(math.ceil(len(run.val_rows) / info.world) / bs) if sharded else math.ceil(len(mine) / bs)
    with torch.no_grad(), run.regime():
        for i in range(0, n_batches * bs, bs):
            part = mine[i : i + bs]
            batch = collate(part or run.val_rows[:1], run.pad_id)  # a rank with no rows left runs a dummy batch
            batch = {k: v.to(info.device) for k, v in batch.items()}
            s, n = run.runner(batch) if sharded else causal_lm_loss(model, batch, cfg.loss_chunk_size)
            if part:
                nll += float(s)
                count += n
    model.train()
    nll, count = distributed.all_sum(nll, info), distributed.all_sum(count, info)
    loss = float(nll / max(1.0, float(count)))
    return loss, math.exp(min(loss, 50.0))


def finish(run: _Run) -> TrainResult:
    """Write the result in Hugging Face Trainer's layout (rank 0): the adapter's ``adapter_config.json`` +
    ``adapter_model.safetensors`` (or, for ``method: full`` / ``freeze``, the whole model and tokenizer) at the
    ``output_dir`` root, ``trainer_state.json`` (``log_history``, ``global_step``, ``max_steps``) and
    ``train_results.json`` (HF's field names, with lorafam's own beside them); then the CSV and the loss plot."""
    out, info, cfg = run.out, run.info, run.cfg
    adapter_dir = None
    seconds = time.perf_counter() - run.t_start
    steps_run = run.total - run.start
    samples = steps_run * run.global_batch
    train_loss = sum(v for _, v in run.loss_curve) / max(1, len(run.loss_curve))
    epoch = round(run.total / run.steps_per_epoch, 4)
    with distributed.full_parameters(run.runner):  # FSDP2: whole tensors on every rank while rank 0 saves
        if info.is_main:
            _save_final(run)
    if info.is_main:
        adapter_dir = str(out)
        run.log_history.append({"train_runtime": round(seconds, 4), "train_loss": train_loss, "epoch": epoch,
                                "step": run.total})  # fmt: skip
        state = {
            "global_step": run.total, "max_steps": run.total, "epoch": epoch,
            "num_train_epochs": math.ceil(run.total / run.steps_per_epoch), "logging_steps": cfg.logging_steps,
            "eval_steps": cfg.eval_steps, "save_steps": cfg.save_steps,
            "train_batch_size": cfg.per_device_train_batch_size, "is_world_process_zero": True,
            "log_history": run.log_history,
        }  # fmt: skip
        (out / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
        run.log.write_csv()
        if cfg.plot_loss:
            plot_loss(run.log.rows(), out / "loss.png")
        if run.tb is not None:
            run.tb.close()
    distributed.barrier(info)
    timed = run.step_times[1:] if len(run.step_times) > 1 else run.step_times
    result = TrainResult(
        output_dir=str(out),
        steps=run.total,
        final_loss=run.loss_curve[-1][1] if run.loss_curve else float("nan"),
        loss_curve=run.loss_curve,
        eval_curve=run.eval_curve,
        seconds_per_step=sum(timed) / max(1, len(timed)),
        tokens_per_second=(run.tokens_seen - run.tokens_at_start) / max(time.perf_counter() - run.t_start, 1e-9),
        trainable_params=run.trainable,
        total_params=run.total_params,
        adapter_dir=adapter_dir,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        data=asdict(run.stats),
    )
    if info.is_main:
        hf = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_runtime": round(seconds, 4),
            "train_samples_per_second": round(samples / max(seconds, 1e-9), 3),
            "train_steps_per_second": round(steps_run / max(seconds, 1e-9), 3),
            "total_flos": 0,  # not counted here (HF counts 6 · params · tokens); kept for tools that read it
        }
        if run.eval_curve:
            hf["eval_loss"] = run.eval_curve[-1][1]
        (out / "train_results.json").write_text(json.dumps({**hf, **asdict(result)}, indent=2) + "\n")
        what = "model" if not cfg.is_adapter_method else "adapter"
        run.console.print(
            f"done: {run.total} steps, final loss {result.final_loss:.4f}, {result.seconds_per_step:.2f} s/step, "
            f"{result.tokens_per_second:,.0f} tokens/s; {what} → {adapter_dir}"
        )
    return result


def _save_final(run: _Run) -> None:
    """The final adapter (or model) files at the ``output_dir`` root, each file replaced atomically."""
    import os
    import shutil

    from lorafam.core.checkpoint import atomic_write_dir, save_adapter

    out = run.out
    tmp = out / ".final-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    if run.cfg.is_adapter_method:
        save_adapter(run.model, tmp)
    else:

        def write(d: Path) -> None:
            run.model.save_pretrained(d, safe_serialization=True)
            run.tok.save_pretrained(d)

        atomic_write_dir(tmp, write)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
