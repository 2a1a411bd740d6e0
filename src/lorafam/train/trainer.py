"""The training loop — explicit, in one function you can read top to bottom (:func:`_run`).

One optimizer step = ``gradient_accumulation_steps`` micro-batches on each of ``world`` ranks; the global batch
is ``per_device_train_batch_size × gradient_accumulation_steps × world`` rows, taken in a seeded order that is a
pure function of ``(seed, epoch)``. The loss of a step is the mean token NLL over *all* labelled tokens of the
global batch: each micro-batch contributes ``sum_nll × world / tokens_in_global_batch`` (DDP averages over
ranks), so 1 process × batch 8 and 2 processes × batch 4 give the same gradient. Callbacks (AdaLoRA's rank
allocator, mixture balance losses) plug in through :mod:`lorafam.train.callbacks`.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorafam.train import distributed
from lorafam.train.checkpointing import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint
from lorafam.train.config import TrainConfig
from lorafam.train.metrics import MetricsLog, plot_loss

_RUN_FILES = ("metrics.jsonl", "metrics.csv", "loss.png", "run_config.yaml", "train_results.json", "adapter")


class TrainingError(RuntimeError):
    """The run cannot start or had to stop; the message says why and what was kept."""


class NonFiniteLossError(TrainingError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is kept."""


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


def lr_lambda(kind: str, warmup: int, total: int):  # -> Callable[[int], float]
    """Multiplier of the base learning rate after ``s`` optimizer steps (Hugging Face's schedules)."""

    def f(s: int) -> float:
        if kind == "constant":
            return 1.0
        if s < warmup:
            return s / max(1, warmup)
        if kind == "constant_with_warmup":
            return 1.0
        progress = (s - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return f


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls are native here (CUDA, or a CPU with AMX / AVX512-BF16); elsewhere they are emulated
    and much slower than fp32 (measured: 300 s vs 60 s per step on an AVX2-only CPU)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return bool(cpu and (cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported()))


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
    from rich.console import Console

    import lorafam as lf
    from lorafam.core.inject import count_params
    from lorafam.data.dataset import collate, epoch_order, pack, split, to_rows
    from lorafam.train.build import build_model, config_examples, loraplus_ratio
    from lorafam.train.callbacks import callbacks_for
    from lorafam.train.loss import LossModule, shifted_targets

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    console = Console(stderr=True, quiet=not info.is_main)
    out = Path(cfg.output_dir)

    # -- output folder (rank 0 decides, everyone learns the answer) ------------------------------------------
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
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.yaml").write_text(cfg.to_yaml())
        console.print(f"[bold]lorafam train[/] → {out}   (resolved config saved as run_config.yaml)")

    # -- model, data, optimizer ------------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model, tok = build_model(cfg, info.device)
    trainable, total_params = count_params(model)
    console.print(lf.trainable_summary(model, printer=None))
    examples, stats = config_examples(cfg, tok)
    train_ex, val_ex = split(examples, cfg.val_size, cfg.seed)
    rows = pack(train_ex, cfg.cutoff_len) if cfg.packing else to_rows(train_ex)
    val_rows = to_rows(val_ex)
    stats.train, stats.val = len(train_ex), len(val_ex)
    stats.packed_rows = len(rows) if cfg.packing else None
    console.print(f"data: {stats.summary()}")
    B, A, W = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, info.world
    G = B * A * W
    if len(rows) < G:
        raise TrainingError(
            f"dataset: {len(rows)} training rows but one optimizer step needs {G} "
            f"(per_device_train_batch_size {B} × gradient_accumulation_steps {A} × {W} processes)"
        )
    steps_per_epoch = len(rows) // G
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    optimizer = lf.make_optimizer(
        model,
        lr=cfg.learning_rate,
        loraplus_ratio=loraplus_ratio(cfg),
        loraplus_lr_embedding=cfg.loraplus_lr_embedding,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optim,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.lr_scheduler_type, cfg.warmup_for(total), total)
    )
    callbacks = callbacks_for(model, total) + extra_callbacks
    loss_module = LossModule(model, cfg.loss_chunk_size)
    runner: nn.Module = loss_module
    if info.enabled:
        runner = nn.parallel.DistributedDataParallel(
            loss_module, broadcast_buffers=False, find_unused_parameters=cfg.ddp_find_unused_parameters
        )
    if cfg.bf16 and not native_bf16(info.device):
        console.print("[yellow]warning:[/] bf16 is emulated on this device (no AMX / AVX512-BF16): expect it to be "
                      "several times slower than fp32. Set bf16: false here.")  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()

    # -- resume ----------------------------------------------------------------------------------------------
    log = MetricsLog(out, enabled=info.is_main)
    start, tokens_seen, loss_curve, eval_curve = 0, 0, [], []
    if resume_path:
        tstate, cb_state = load_checkpoint(resume_path, model, optimizer, scheduler, rank=info.rank)
        start, tokens_seen = tstate["global_step"], tstate["tokens_seen"]
        loss_curve = [tuple(x) for x in tstate["loss_curve"]]
        eval_curve = [tuple(x) for x in tstate["eval_curve"]]
        for i, cb in enumerate(callbacks):
            cb.load_state_dict(cb_state.get(f"{i}:{cb.name}", {}))
        log.truncate_after(start)
        console.print(f"resumed from {resume_path} at step {start}/{total}")
    else:
        log.truncate_after(0)  # a run killed before its first checkpoint leaves lines that no longer apply
        if cfg.resume_from_checkpoint:
            console.print("resume_from_checkpoint: no complete checkpoint yet, starting at step 0")
    for cb in callbacks:
        cb.on_train_begin(model, total)

    def evaluate() -> tuple[float, float]:
        from lorafam.train.loss import causal_lm_loss

        model.eval()
        nll = torch.zeros((), dtype=torch.float64)
        count = torch.zeros((), dtype=torch.float64)
        mine = val_rows[info.rank :: info.world]
        with torch.no_grad(), autocast:
            for i in range(0, len(mine), cfg.per_device_eval_batch_size):
                batch = collate(mine[i : i + cfg.per_device_eval_batch_size], pad_id)
                batch = {k: v.to(info.device) for k, v in batch.items()}
                s, n = causal_lm_loss(model, batch, cfg.loss_chunk_size)
                nll += float(s)
                count += n
        model.train()
        nll, count = distributed.all_sum(nll, info), distributed.all_sum(count, info)
        loss = float(nll / max(1.0, float(count)))
        return loss, math.exp(min(loss, 50.0))

    # -- the loop --------------------------------------------------------------------------------------------
    progress = _progress(console, disabled=cfg.disable_progress or not info.is_main)
    task = progress.add_task("train", total=total, completed=start, loss="—", tps="—")
    window: list[float] = []
    step_times: list[float] = []
    t_start = time.perf_counter()
    tokens_at_start = tokens_seen
    last_ckpt = str(latest_checkpoint(out)) if info.is_main and latest_checkpoint(out) else None
    order_cache: dict[int, list[int]] = {}
    with progress:
        for step in range(start, total):
            t0 = time.perf_counter()
            epoch, b = divmod(step, steps_per_epoch)
            if epoch not in order_cache:
                order_cache = {epoch: epoch_order(len(rows), cfg.seed, epoch)}
            grows = _global_rows(rows, order_cache[epoch], b, G)
            micro = []
            for k in range(A):
                part = grows[k * B * W + info.rank * B : k * B * W + (info.rank + 1) * B]
                micro.append({key: v.to(info.device) for key, v in collate(part, pad_id, cfg.packing).items()})
            n_local = sum(int((shifted_targets(mb["labels"]) != -100).sum()) for mb in micro)
            n_global = int(distributed.all_sum(torch.tensor(n_local, dtype=torch.long), info))
            nll_local = torch.zeros((), dtype=torch.float64)
            aux = 0.0  # callbacks' extra loss terms (same on every rank)
            for k, mb in enumerate(micro):
                sync = contextlib.nullcontext()
                if info.enabled and k < A - 1:
                    sync = runner.no_sync()  # type: ignore[operator]
                with sync, autocast:
                    nll, _ = runner(mb)
                    loss = nll * (W / max(1, n_global))
                    for cb in callbacks:
                        extra = cb.extra_loss(model)
                        if extra is not None:
                            loss = loss + extra / A
                            aux += float(extra.detach()) / A
                loss.backward()
                nll_local += float(nll.detach())
            step_loss = float(distributed.all_sum(nll_local, info)) / max(1, n_global)
            if not math.isfinite(step_loss + aux):
                _stop(log, step + 1, f"loss is {step_loss + aux}", last_ckpt)
            for cb in callbacks:
                cb.on_after_backward(step + 1, model)
            if cfg.max_grad_norm:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            else:
                grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
            if not math.isfinite(grad_norm):
                _stop(log, step + 1, f"gradient norm is {grad_norm}", last_ckpt)
            lr_now = scheduler.get_last_lr()[0]
            optimizer.step()
            for cb in callbacks:
                cb.on_optimizer_step(step + 1, model)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            tokens_seen += sum(len(r.input_ids) for r in grows)
            step_times.append(time.perf_counter() - t0)
            window.append(step_loss)
            loss_curve.append((done, step_loss))
            elapsed = time.perf_counter() - t_start
            tps = (tokens_seen - tokens_at_start) / max(elapsed, 1e-9)
            progress.update(task, completed=done, loss=f"{step_loss:.4f}", tps=f"{tps:,.0f}")
            if done % cfg.logging_steps == 0 or done == total:
                row = {
                    "current_steps": done,
                    "total_steps": total,
                    "loss": sum(window) / len(window),
                    "grad_norm": grad_norm,
                    "lr": lr_now,
                    "epoch": round(done / steps_per_epoch, 4),
                    "percentage": round(100 * done / total, 2),
                    "elapsed_time": round(elapsed, 2),
                    "remaining_time": round(elapsed / (done - start) * (total - done), 2),
                    "tokens_per_second": round(tps, 1),
                    "throughput": round(tps, 1),
                    "total_tokens": tokens_seen,
                }
                if aux:
                    row["aux_loss"] = aux
                for cb in callbacks:
                    row.update(cb.logs())
                log.write(row)
                window = []
            if val_rows and cfg.eval_steps and (done % cfg.eval_steps == 0 or done == total):
                eval_loss, ppl = evaluate()
                eval_curve.append((done, eval_loss))
                log.write({"current_steps": done, "total_steps": total, "eval_loss": eval_loss, "eval_ppl": ppl})
                console.print(f"step {done}: eval_loss {eval_loss:.4f}  ppl {ppl:.2f}")
            if cfg.save_steps and done % cfg.save_steps == 0 and done < total:
                last_ckpt = _save(cfg, info, out, done, model, optimizer, scheduler, callbacks, tokens_seen,
                                  loss_curve, eval_curve, steps_per_epoch)  # fmt: skip

    # -- the end ---------------------------------------------------------------------------------------------
    adapter_dir = None
    if info.is_main:
        adapter_dir = str(lf.save_adapter(model, out / "adapter"))
        log.write_csv()
        if cfg.plot_loss:
            plot_loss(log.rows(), out / "loss.png")
    distributed.barrier(info)
    timed = step_times[1:] if len(step_times) > 1 else step_times
    result = TrainResult(
        output_dir=str(out),
        steps=total,
        final_loss=loss_curve[-1][1] if loss_curve else float("nan"),
        loss_curve=loss_curve,
        eval_curve=eval_curve,
        seconds_per_step=sum(timed) / max(1, len(timed)),
        tokens_per_second=(tokens_seen - tokens_at_start) / max(time.perf_counter() - t_start, 1e-9),
        trainable_params=trainable,
        total_params=total_params,
        adapter_dir=adapter_dir,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        data=asdict(stats),
    )
    if info.is_main:
        (out / "train_results.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
        console.print(
            f"done: {total} steps, final loss {result.final_loss:.4f}, {result.seconds_per_step:.2f} s/step, "
            f"{result.tokens_per_second:,.0f} tokens/s; adapter → {adapter_dir}"
        )
    return result


def _stop(log: MetricsLog, step: int, what: str, last_ckpt: str | None) -> None:
    kept = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written before it"
    msg = (
        f"training stopped at step {step}: {what}. Nothing after it was saved; {kept}. Lower learning_rate "
        "(or check the data), then resume with resume_from_checkpoint: true"
    )
    log.write({"current_steps": step, "stopped": what})
    log.write_csv()
    raise NonFiniteLossError(msg)


def _save(
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
        }
        cb_state = {f"{i}:{cb.name}": cb.state_dict() for i, cb in enumerate(callbacks)}
        path = str(save_checkpoint(out, done, model, optimizer, scheduler, tstate, cb_state, states,
                                   cfg.save_total_limit))  # fmt: skip
    distributed.barrier(info)
    return path


def _progress(console: Any, disabled: bool):  # -> rich.progress.Progress
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
