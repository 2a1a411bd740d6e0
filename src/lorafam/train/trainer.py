"""The training loop, in phases you can read top to bottom (:func:`_run`): setup, resume, the loop, logging and
evaluation, finish. The optimizer step itself (and the order of the callback hooks) is
:func:`lorafam.train.step.optimizer_step`, shared with the arena.

One optimizer step = ``gradient_accumulation_steps`` micro-batches on each of ``world`` ranks; the global batch
is ``per_device_train_batch_size × gradient_accumulation_steps × world`` rows, taken in a seeded order that is a
pure function of ``(seed, epoch)``. The loss of a step is the mean token NLL over *all* labelled tokens of the
global batch: each micro-batch contributes ``sum_nll × world / tokens_in_global_batch`` (DDP averages over
ranks), so 1 process × batch 8 and 2 processes × batch 4 give the same gradient. Callbacks (AdaLoRA's rank
allocator, mixture balance losses) plug in through :mod:`lorafam.train.callbacks`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorafam.core.precision import native_bf16
from lorafam.train import distributed
from lorafam.train.checkpointing import latest_checkpoint, load_checkpoint
from lorafam.train.config import TrainConfig
from lorafam.train.finish import TrainResult, evaluate, finish
from lorafam.train.metrics import MetricsLog
from lorafam.train.run_dir import NonFiniteLossError, TrainingError, prepare_output_dir
from lorafam.train.run_dir import progress_bar as _progress
from lorafam.train.run_dir import save_state as _save
from lorafam.train.run_dir import stop as _stop
from lorafam.train.step import StepResult, lr_lambda, optimizer_step

__all__ = ["NonFiniteLossError", "TrainResult", "TrainingError", "lr_lambda", "native_bf16", "train"]


def _global_rows(rows: list, order: list[int], b: int, size: int) -> list:
    return [rows[i] for i in order[b * size : (b + 1) * size]]


def train(cfg: TrainConfig, extra_callbacks: list | None = None) -> TrainResult:
    """Run one training job described by ``cfg`` (single process, or one rank under torchrun)."""
    info = distributed.setup(cfg.device)
    try:
        return _run(cfg, info, list(extra_callbacks or []))
    finally:
        distributed.teardown(info)


def _run(cfg: TrainConfig, info: distributed.DistInfo, extra_callbacks: list) -> TrainResult:
    """The phases of a run, in order: setup, resume, the loop (training, logging, evaluation, checkpoints), finish."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run = _setup(cfg, info, extra_callbacks)
    _resume(run)
    _loop(run)
    return finish(run)


@dataclass
class _Run:
    """Everything a run holds between its phases (built by :func:`_setup`, advanced by :func:`_loop`)."""

    cfg: TrainConfig
    info: distributed.DistInfo
    console: Any
    out: Path
    resume_path: str | None
    model: nn.Module
    pad_id: int
    rows: list
    val_rows: list
    stats: Any
    steps_per_epoch: int
    total: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    callbacks: list
    runner: nn.Module
    params: list
    log: MetricsLog
    trainable: int
    total_params: int
    start: int = 0
    tokens_seen: int = 0
    loss_curve: list = field(default_factory=list)
    eval_curve: list = field(default_factory=list)
    step_times: list = field(default_factory=list)
    window: list = field(default_factory=list)
    last_ckpt: str | None = None
    t_start: float = 0.0
    tokens_at_start: int = 0
    tok: Any = None
    tb: Any = None  # a torch.utils.tensorboard SummaryWriter when report_to has tensorboard (rank 0)
    log_history: list = field(default_factory=list)  # HF trainer_state.json's rows

    @property
    def global_batch(self) -> int:
        return self.cfg.per_device_train_batch_size * self.cfg.gradient_accumulation_steps * self.info.world

    def regime(self) -> contextlib.AbstractContextManager[Any]:
        """The numeric regime of every forward: bf16 autocast when ``bf16``."""
        if self.cfg.bf16:
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


# -- phase 1: setup ------------------------------------------------------------------------------------------------
def _output_folder(cfg: TrainConfig, info: distributed.DistInfo, console: Any) -> str | None:
    """Rank 0 decides whether to resume or start afresh, every rank learns the answer; the resolved config is saved."""
    decision: tuple[str | None, str | None] = (None, None)
    if info.is_main:
        try:
            found = prepare_output_dir(cfg)
            decision = (str(found) if found else None, None)
        except TrainingError as exc:
            decision = (None, str(exc))
    resume_path, error = distributed.broadcast_object(decision, info)  # type: ignore[misc]
    if error:
        raise TrainingError(error)
    if info.is_main:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.yaml").write_text(cfg.to_yaml())
        console.print(f"[bold]lorafam train[/] → {out}   (resolved config saved as run_config.yaml)")
    return resume_path


def _setup(cfg: TrainConfig, info: distributed.DistInfo, extra_callbacks: list) -> _Run:
    """Output folder, model with its adapter, data rows, optimizer, schedule, callbacks, (DDP) loss runner."""
    from rich.console import Console

    from lorafam.core.inject import configs, count_params, trainable_summary
    from lorafam.data.dataset import check_packing, pack, split, to_rows
    from lorafam.train.build import build_model, config_examples, loraplus_ratio
    from lorafam.train.callbacks import callbacks_for
    from lorafam.train.loss import LossModule
    from lorafam.train.schedule import build_optimizer, build_scheduler

    console = Console(stderr=True, quiet=not info.is_main)
    resume_path = _output_folder(cfg, info, console)
    torch.manual_seed(cfg.seed)
    model, tok = build_model(cfg, info.device)
    trainable, total_params = count_params(model)
    console.print(trainable_summary(model, printer=None))
    examples, stats = config_examples(cfg, tok)
    if cfg.packing:
        try:
            check_packing(configs(model))
        except ValueError as exc:
            raise TrainingError(str(exc)) from exc
    if cfg.eval_dataset:  # a held-out dataset of its own (LLaMA-Factory / HF eval_dataset); val_size is not used
        train_ex = examples
        val_ex, eval_stats = config_examples(cfg, tok, cfg.eval_dataset)
        stats.notes += [f"eval_dataset: {', '.join(eval_stats.files)} ({len(val_ex)} examples)"]
        if cfg.val_size:
            stats.notes.append("val_size is not used: eval_dataset gives the evaluation data")
    else:
        train_ex, val_ex = split(examples, cfg.val_size, cfg.seed)
    rows = pack(train_ex, cfg.cutoff_len) if cfg.packing else to_rows(train_ex)
    stats.train, stats.val = len(train_ex), len(val_ex)
    stats.packed_rows = len(rows) if cfg.packing else None
    console.print(f"data: {stats.summary()}")
    B, A, W = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, info.world
    if len(rows) < B * A * W:
        raise TrainingError(
            f"dataset: {len(rows)} training rows but one optimizer step needs {B * A * W} "
            f"(per_device_train_batch_size {B} × gradient_accumulation_steps {A} × {W} processes)"
        )
    steps_per_epoch = len(rows) // (B * A * W)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    callbacks = callbacks_for(model, total) + extra_callbacks
    if cfg.fsdp and info.enabled:  # refused before any compute (intermediate checkpoints, unshardable members)
        every = {"steps": cfg.save_steps, "epoch": steps_per_epoch}.get(cfg.save_strategy)
        try:
            distributed.check_fsdp(model, callbacks, cfg.save_strategy, every, total)
        except distributed.NotShardableError as exc:
            raise TrainingError(str(exc)) from exc
    if cfg.torch_compile:  # in place, before DDP wraps the loss: names, state_dict and checkpoints stay eager's
        from lorafam.train.compile import compile_for_training

        try:
            part = compile_for_training(model, cfg.torch_compile_backend, cfg.torch_compile_mode)
        except ValueError as exc:
            raise TrainingError(str(exc)) from exc
        console.print(f"torch_compile: {type(part).__name__} compiled in place (backend {cfg.torch_compile_backend}"
                      "); the first step, and the first one at a new batch shape, include compilation")  # fmt: skip
    runner = distributed.wrap(LossModule(model, cfg.loss_chunk_size), model, info, fsdp=cfg.fsdp,
                              find_unused=cfg.ddp_find_unused_parameters)  # fmt: skip
    optimizer = build_optimizer(model, cfg, loraplus_ratio(cfg))  # after wrap: FSDP2 replaces the parameters
    scheduler = build_scheduler(optimizer, cfg, total)
    if cfg.bf16 and not native_bf16(info.device):
        console.print("[yellow]warning:[/] bf16 is emulated on this device (no AMX / AVX512-BF16): expect it to be "
                      "several times slower than fp32. Set bf16: false here.")  # fmt: skip
    return _Run(
        cfg=cfg, info=info, console=console, out=Path(cfg.output_dir), resume_path=resume_path, model=model,
        pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0, rows=rows, val_rows=to_rows(val_ex),
        stats=stats, steps_per_epoch=steps_per_epoch, total=total, optimizer=optimizer, scheduler=scheduler,
        callbacks=callbacks, runner=runner,
        params=[p for p in model.parameters() if p.requires_grad], log=MetricsLog(cfg.output_dir, info.is_main),
        trainable=trainable, total_params=total_params, tok=tok, tb=_tensorboard(cfg, info),
    )  # fmt: skip


def _tensorboard(cfg: TrainConfig, info: distributed.DistInfo) -> Any:
    """``report_to: tensorboard``: a SummaryWriter in ``logging_dir`` (default ``output_dir/runs``), rank 0 only.
    metrics.jsonl stays the source of truth; the event files mirror its numbers."""
    if "tensorboard" not in cfg.report_to or not info.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TrainingError(
            "report_to: tensorboard needs the tensorboard package: pip install 'lorafam[tensorboard]'"
        ) from exc
    return SummaryWriter(log_dir=cfg.logging_dir or str(Path(cfg.output_dir) / "runs"))


# -- phase 2: resume -----------------------------------------------------------------------------------------------
def _resume(run: _Run) -> None:
    """Restore the state of ``run.resume_path`` (adapter, optimizer, scheduler, RNGs, curves, callbacks)."""
    if run.resume_path:
        tstate, cb_state = load_checkpoint(
            run.resume_path, run.model, run.optimizer, run.scheduler, rank=run.info.rank
        )
        run.start, run.tokens_seen = tstate["global_step"], tstate["tokens_seen"]
        run.loss_curve = [tuple(x) for x in tstate["loss_curve"]]
        run.eval_curve = [tuple(x) for x in tstate["eval_curve"]]
        for i, cb in enumerate(run.callbacks):
            cb.load_state_dict(cb_state.get(f"{i}:{cb.name}", {}))
        run.log.truncate_after(run.start)
        run.console.print(f"resumed from {run.resume_path} at step {run.start}/{run.total}")
    else:
        run.log.truncate_after(0)  # a run killed before its first checkpoint leaves lines that no longer apply
        if run.cfg.resume_from_checkpoint:
            run.console.print("resume_from_checkpoint: no complete checkpoint yet, starting at step 0")
    for cb in run.callbacks:
        cb.on_train_begin(run.model, run.total)
    if run.info.is_main:
        found = latest_checkpoint(run.out)
        run.last_ckpt = str(found) if found else None


# -- phase 3: the loop ---------------------------------------------------------------------------------------------
def _loop(run: _Run) -> None:
    """Steps ``start+1 .. total``: one optimizer step each, then logging, evaluation and checkpoints when due."""
    from lorafam.data.dataset import epoch_order

    progress = _progress(run.console, disabled=run.cfg.disable_progress or not run.info.is_main)
    task = progress.add_task("train", total=run.total, completed=run.start, loss="—", tps="—")
    run.t_start = time.perf_counter()
    run.tokens_at_start = run.tokens_seen
    order_cache: dict[int, list[int]] = {}
    with progress:
        for step in range(run.start, run.total):
            t0 = time.perf_counter()
            epoch, b = divmod(step, run.steps_per_epoch)
            if epoch not in order_cache:
                order_cache = {epoch: epoch_order(len(run.rows), run.cfg.seed, epoch)}
            grows = _global_rows(run.rows, order_cache[epoch], b, run.global_batch)
            result = _train_step(run, step + 1, grows)
            done = step + 1
            run.tokens_seen += sum(len(r.input_ids) for r in grows)
            run.step_times.append(time.perf_counter() - t0)
            run.window.append(result.loss)
            run.loss_curve.append((done, result.loss))
            tps = (run.tokens_seen - run.tokens_at_start) / max(time.perf_counter() - run.t_start, 1e-9)
            progress.update(task, completed=done, loss=f"{result.loss:.4f}", tps=f"{tps:,.0f}")
            _after_step(run, done, result, tps)


def _train_step(run: _Run, step: int, grows: list) -> StepResult:
    """This rank's micro-batches of the global batch ``grows``, through :func:`lorafam.train.step.optimizer_step`.

    Each micro-batch contributes ``sum_nll × world / tokens_in_global_batch`` (DDP averages over ranks)."""
    from lorafam.data.dataset import collate
    from lorafam.train.loss import shifted_targets
    from lorafam.train.schedule import steps_per_optimizer_step

    cfg, info = run.cfg, run.info
    B, W = cfg.per_device_train_batch_size, info.world
    micro = []
    for k in range(cfg.gradient_accumulation_steps):
        part = grows[k * B * W + info.rank * B : k * B * W + (info.rank + 1) * B]
        micro.append({key: v.to(info.device) for key, v in collate(part, run.pad_id, cfg.packing).items()})
    n_local = sum(int((shifted_targets(mb["labels"]) != -100).sum()) for mb in micro)
    n_global = int(distributed.all_sum(torch.tensor(n_local, dtype=torch.long), info))

    def loss_fn(mb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        nll, _ = run.runner(mb)
        return nll * (W / max(1, n_global)), nll

    def stop(what: str, value: float) -> None:
        _stop(run.log, step, f"{what} is {value}", run.last_ckpt)

    return optimizer_step(
        step,
        run.model,
        run.optimizer,
        micro,
        loss_fn,
        run.callbacks,
        scheduler=run.scheduler if steps_per_optimizer_step(cfg) else None,
        max_grad_norm=cfg.max_grad_norm,
        params=run.params,
        regime=run.regime,
        no_sync=distributed.accumulation_context(run.runner, info, cfg.fsdp),
        reduce=lambda s: distributed.all_sum(s, info) / max(1, n_global),
        on_nonfinite=stop,
    )


# -- phase 4: logging, evaluation and checkpoints ----------------------------------------------------------------
def _due(strategy: str, every: int | None, done: int, run: _Run) -> bool:
    """Whether an ``eval_strategy`` / ``save_strategy`` (HF: ``steps`` | ``epoch`` | ``no``) fires after ``done``."""
    if strategy == "steps":
        return bool(every) and done % every == 0  # type: ignore[operator]
    if strategy == "epoch":
        return done % run.steps_per_epoch == 0
    return False


def _after_step(run: _Run, done: int, result: StepResult, tps: float) -> None:
    from lorafam.train.schedule import step_on_eval

    cfg = run.cfg
    if done % cfg.logging_steps == 0 or done == run.total:
        _log_step(run, done, result, tps)
    evaluating = cfg.effective_eval_strategy
    if run.val_rows and evaluating != "no" and (_due(evaluating, cfg.eval_steps, done, run) or done == run.total):
        eval_loss, ppl = evaluate(run)
        run.eval_curve.append((done, eval_loss))
        run.log.write({"current_steps": done, "total_steps": run.total, "eval_loss": eval_loss, "eval_ppl": ppl})
        run.log_history.append({"eval_loss": eval_loss, "eval_perplexity": ppl,
                                "epoch": round(done / run.steps_per_epoch, 4), "step": done})  # fmt: skip
        if run.tb is not None:
            run.tb.add_scalar("eval/loss", eval_loss, done)
            run.tb.add_scalar("eval/perplexity", ppl, done)
        run.console.print(f"step {done}: eval_loss {eval_loss:.4f}  ppl {ppl:.2f}")
        step_on_eval(run.scheduler, cfg, eval_loss)
    if _due(cfg.save_strategy, cfg.save_steps, done, run) and done < run.total:
        run.last_ckpt = _save(cfg, run.info, run.out, done, run.model, run.optimizer, run.scheduler, run.callbacks,
                              run.tokens_seen, run.loss_curve, run.eval_curve, run.steps_per_epoch,
                              run.log_history, run.total)  # fmt: skip


def _log_step(run: _Run, done: int, result: StepResult, tps: float) -> None:
    """One metrics line (LLaMA-Factory's keys) averaging the losses since the previous line."""
    elapsed = time.perf_counter() - run.t_start
    row = {
        "current_steps": done,
        "total_steps": run.total,
        "loss": sum(run.window) / len(run.window),
        "grad_norm": result.grad_norm,
        "lr": result.lr,
        "epoch": round(done / run.steps_per_epoch, 4),
        "percentage": round(100 * done / run.total, 2),
        "elapsed_time": round(elapsed, 2),
        "remaining_time": round(elapsed / (done - run.start) * (run.total - done), 2),
        "tokens_per_second": round(tps, 1),
        "throughput": round(tps, 1),
        "total_tokens": run.tokens_seen,
    }
    if result.extra:
        row["aux_loss"] = result.extra
    for cb in run.callbacks:
        row.update(cb.logs())
    run.log.write(row)
    run.log_history.append({"loss": row["loss"], "grad_norm": row["grad_norm"], "learning_rate": row["lr"],
                            "epoch": row["epoch"], "step": done})  # fmt: skip
    if run.tb is not None:
        for key in ("loss", "grad_norm", "lr", "tokens_per_second"):
            run.tb.add_scalar(f"train/{'learning_rate' if key == 'lr' else key}", row[key], done)
    run.window = []
