"""One optimizer step, with the order of the callback hooks written down once.

The trainer (:mod:`lorafam.train.trainer`), the arena's harness and a hand-written loop all call
:func:`optimizer_step`, so a member's callbacks (AdaLoRA's rank allocator, the mixture's balance loss) see the same
sequence everywhere:

1. for each micro-batch: forward under ``regime`` → loss + Σ ``cb.extra_loss(model)`` / n_micro → backward
   (DDP's gradient sync is skipped with ``no_sync`` for every micro-batch but the last);
2. ``on_nonfinite("loss", value)`` when the task loss + extra is NaN/inf — it may raise to stop here;
3. ``cb.on_after_backward(step, model)`` — gradients complete, the optimizer has not moved;
4. clip the gradient norm to ``max_grad_norm`` (or just measure it) → ``on_nonfinite("gradient norm", norm)`` when
   it is NaN/inf;
5. ``optimizer.step()``;
6. ``cb.on_optimizer_step(step, model)`` — gradients still held (AdaLoRA's importance needs them; this is also
   where PEFT documents ``update_and_allocate``);
7. ``scheduler.step()`` → ``optimizer.zero_grad(set_to_none=True)``.

``step`` is the 1-based number of the optimizer step being completed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

LossFn = Callable[[Any], tuple[Tensor, Tensor]]
"""``loss_fn(micro_batch) -> (to_backprop, to_report)``: the term whose gradient is accumulated, and the detached
number that goes into the step's reported loss (summed over micro-batches, then passed to ``reduce``)."""


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step measured."""

    loss: float
    """The task loss of the step (``reduce`` applied to the sum of the micro-batches' reported losses)."""
    extra: float
    """The callbacks' extra loss terms (already averaged over micro-batches), 0.0 when there are none."""
    grad_norm: float
    """Total gradient norm before clipping."""
    lr: float
    """Learning rate of the first parameter group during this step (before the scheduler moved it)."""


def _hooks(callbacks: Sequence[Any], name: str) -> list[Callable[..., Any]]:
    return [getattr(cb, name) for cb in callbacks]


def grad_norm_of(params: Sequence[nn.Parameter], max_norm: float | None) -> float:
    """Clip to ``max_norm`` when given (returns the norm before clipping), else only measure the norm."""
    from lorafam.train.distributed import local_value  # FSDP2: norms of sharded gradients are DTensors

    if max_norm:
        return float(local_value(torch.nn.utils.clip_grad_norm_(params, max_norm)))
    grads = [local_value(p.grad.norm()) for p in params if p.grad is not None]
    return float(torch.norm(torch.stack(grads))) if grads else 0.0


def optimizer_step(
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Any],
    loss_fn: LossFn,
    callbacks: Sequence[Any] = (),
    *,
    scheduler: Any = None,
    max_grad_norm: float | None = None,
    params: Sequence[nn.Parameter] | None = None,
    regime: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    on_nonfinite: Callable[[str, float], None] | None = None,
) -> StepResult:
    """Run one optimizer step over ``micro_batches`` (gradient accumulation) in the order of the module docstring.

    Args:
        step: 1-based number of the step being completed (passed to the callbacks).
        model: the model the callbacks look at (the unwrapped one, also under DDP).
        optimizer: the optimizer; ``params`` defaults to every parameter in its groups.
        micro_batches: one entry per forward/backward; ``loss_fn`` turns an entry into losses.
        loss_fn: ``(to_backprop, to_report)`` for one micro-batch (see :data:`LossFn`).
        callbacks: objects with the :class:`lorafam.train.callbacks.Callback` hooks.
        scheduler: stepped once after the optimizer (None: the caller manages the learning rate).
        max_grad_norm: clip the total gradient norm to this (None or 0: no clipping).
        regime: a fresh context per forward (bf16 autocast, or nothing).
        no_sync: DDP's ``no_sync`` for all micro-batches but the last (None: single process).
        reduce: turns the summed reported loss into the step's loss (an all-reduce and a token count under DDP);
            None keeps the sum divided by the number of micro-batches.
        on_nonfinite: called as ``on_nonfinite("loss", value)`` after backward or ``on_nonfinite("gradient norm",
            value)`` after clipping when that value is NaN/inf; raising there stops before the optimizer moves
            (None: carry on, as a plain loop would).

    Returns:
        A :class:`StepResult`.
    """
    n = len(micro_batches)
    if n == 0:
        raise ValueError("optimizer_step: no micro-batches")
    extra_loss = _hooks(callbacks, "extra_loss")
    reported = torch.zeros((), dtype=torch.float64)
    extra_total = 0.0
    for k, batch in enumerate(micro_batches):
        sync = no_sync() if no_sync is not None and k < n - 1 else contextlib.nullcontext()
        with sync:
            with regime():
                loss, report = loss_fn(batch)
                for hook in extra_loss:
                    extra = hook(model)
                    if extra is not None:
                        loss = loss + extra / n
                        extra_total += float(extra.detach()) / n
            loss.backward()
        reported += float(report.detach())
    loss_value = float(reduce(reported)) if reduce is not None else float(reported) / n
    if on_nonfinite is not None and not math.isfinite(loss_value + extra_total):
        on_nonfinite("loss", loss_value + extra_total)
    for hook in _hooks(callbacks, "on_after_backward"):
        hook(step, model)
    if params is None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
    norm = grad_norm_of(params, max_grad_norm)
    if on_nonfinite is not None and not math.isfinite(norm):
        on_nonfinite("gradient norm", norm)
    lr = float(scheduler.get_last_lr()[0]) if scheduler is not None else float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    for hook in _hooks(callbacks, "on_optimizer_step"):
        hook(step, model)
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=loss_value, extra=extra_total, grad_norm=norm, lr=lr)


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
