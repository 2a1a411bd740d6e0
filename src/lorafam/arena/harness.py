"""The arena's harness: one model-building step per implementation, then one shared training loop and evaluator.

Implementations (``impl``):

- ``lorafam``: the family member from the registry (its preset, its optimizer options, its trainer callbacks).
- ``peft``: the same member through Hugging Face PEFT (config translated by the member's own ``to_peft()``).
- ``full``: full fine-tuning, every parameter trainable.
- ``base``: no training (the zero line and the bf16 noise floor of the probes).

Everything after building (data, batches, warm-up, clipping, bf16 regime, evaluation, probes) is the same code
for all four, so their ratios compare methods, not harnesses.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lorafam.arena.built import Built, member_config
from lorafam.arena.prompts import ByteFormatter, ChatFormatter
from lorafam.train.callbacks import Callback


def load_base(settings: dict[str, Any], device: torch.device) -> tuple[nn.Module, Any]:
    """(model, formatter) for ``settings["model"]``: "default" (embedded SmolLM2), "tiny-llama", "tiny-gpt2", or a
    local transformers folder."""
    from lorafam.models import load_model, load_tokenizer, tiny_gpt2, tiny_llama

    name = settings.get("model", "default")
    if name == "tiny-llama":
        return tiny_llama(seed=0).to(device), ByteFormatter()
    if name == "tiny-gpt2":
        return tiny_gpt2(seed=0).to(device), ByteFormatter()
    path = None if name == "default" else name
    system = settings.get("system_prompt")  # "" = an empty system turn: 17 fewer tokens per item than the default
    return load_model(path, device=device), ChatFormatter(load_tokenizer(path), system)


# ---------------------------------------------------------------------------------------------------------------
def build(
    impl: str, member_name: str, model: nn.Module, settings: dict[str, Any], formatter: Any, steps: int
) -> Built:
    if impl == "lorafam":
        return _build_lorafam(member_name, model, settings, formatter, steps)
    if impl == "peft":
        from lorafam.arena.peers import build_peft

        return build_peft(member_name, model, settings, formatter, steps)
    if impl == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings["lr"])
        return Built(model, opt, mergeable=None)
    if impl == "base":
        for p in model.parameters():
            p.requires_grad_(False)
        return Built(model, None)
    raise ValueError(f"unknown impl {impl!r}; valid: lorafam, peft, full, base")


def _build_lorafam(
    member_name: str, model: nn.Module, settings: dict[str, Any], formatter: Any, steps: int
) -> Built:
    from lorafam.core.checkpoint import save_adapter
    from lorafam.core.inject import adapted_layers, attach, disabled, merge, unmerge
    from lorafam.family import MEMBERS, spec_for_config
    from lorafam.optim import make_optimizer
    from lorafam.train.callbacks import callbacks_for

    cfg = member_config(member_name, settings, formatter, steps)
    attach(model, cfg)
    opt = make_optimizer(model, lr=settings["lr"], loraplus_ratio=MEMBERS[member_name].train.loraplus_ratio)
    adapter_cls = spec_for_config(cfg).adapter_cls
    return Built(
        model,
        opt,
        callbacks=callbacks_for(model, steps),
        adapter_config=cfg.to_dict(),
        disabled=lambda: disabled(model),
        merge=lambda: merge(model),
        unmerge=lambda: unmerge(model),
        save=lambda path: save_adapter(model, path),
        mergeable=adapter_cls.mergeable,
        not_mergeable_reason=adapter_cls.not_mergeable_reason,
        adapted_bases=[layer.base_layer for _, layer in adapted_layers(model)],
    )


# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def regime(settings: dict[str, Any], device: torch.device) -> Iterator[None]:
    """The numeric regime of every forward: bf16 autocast when ``bf16`` (the frozen base is stored in bf16)."""
    if settings.get("bf16", True) is True:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def train(
    built: Built,
    batches: list[dict[str, torch.Tensor]],
    settings: dict[str, Any],
    device: torch.device,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """The shared loop: linear warm-up then constant lr, grad clipping, member callbacks; returns timings.

    Each step is :func:`lorafam.train.step.optimizer_step` (the order of the callback hooks is written there once,
    the same as the trainer's). ``on_step(step, loss)`` runs after each step (the worker evaluates curve points
    there, in eval mode, outside the timed training).
    """
    from lorafam.train.step import optimizer_step

    model, opt = built.model, built.optimizer
    assert opt is not None
    model.train()
    base_lrs = [g["lr"] for g in opt.param_groups]
    params = [p for g in opt.param_groups for p in g["params"]]
    warm = max(int(settings.get("warmup_steps", 0)), 0)
    callbacks = list(built.callbacks)
    if built.after_backward is not None:
        callbacks.append(_AfterStep(built.after_backward))
    for cb in callbacks:
        cb.on_train_begin(model, len(batches))
    curve: list[list[float]] = []
    example_losses: list[list[float]] = []
    tokens = 0
    clip = float(settings["clip"]) if settings.get("clip") else None

    def loss_fn(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss, per_example = answer_losses(model, batch)
        example_losses.append(per_example)
        return loss, loss.detach()

    start = time.perf_counter()
    paused = 0.0
    for step, batch in enumerate(batches, 1):
        scale = min(1.0, step / warm) if warm else 1.0
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        batch = {k: v.to(device) for k, v in batch.items()}
        result = optimizer_step(
            step,
            model,
            opt,
            [batch],
            loss_fn,
            callbacks,
            max_grad_norm=clip,
            params=params,
            regime=lambda: regime(settings, device),
        )
        tokens += int(batch["attention_mask"].sum())
        curve.append([step, result.loss + result.extra])
        if on_step is not None:
            t0 = time.perf_counter()
            on_step(step, curve[-1][1])
            paused += time.perf_counter() - t0
    seconds = time.perf_counter() - start - paused
    model.eval()
    n = max(len(batches), 1)
    return {
        "loss_curve": curve,
        "example_losses": example_losses,
        "train_seconds": seconds,
        "seconds_per_step": seconds / n,
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
    }


class _AfterStep(Callback):
    """A step hook given as a function (PEFT AdaLoRA's ``update_and_allocate``), run where PEFT documents it: after
    ``optimizer.step()``, before ``zero_grad()``."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def on_optimizer_step(self, step: int, model: nn.Module) -> None:
        self.fn(step)


def answer_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (answer) positions, with the output head applied only there.

    The same value as ``model(**batch).loss``, but the vocabulary projection (576 × 49,152 on SmolLM2, a fifth of
    the model's FLOPs per token) runs on the answer tokens only, through transformers' ``logits_to_keep`` (a
    boolean mask). It goes through the model's own forward, so PEFT's wrappers and hooks (aLoRA offsets) apply
    unchanged; models without ``logits_to_keep`` fall back to the full loss.
    """
    return answer_losses(model, batch)[0]


def answer_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[float]]:
    """(token-mean loss of the batch, as :func:`answer_loss`; each example's own mean answer loss, detached).

    The per-example losses are what the arena records per step: runs with the same data order saw the same
    examples at the same step, so their loss curves can be compared pairwise (and bootstrapped over examples).
    """
    from lorafam.train.loss import shifted_targets

    targets = shifted_targets(batch["labels"])
    keep = targets != -100
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    try:
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
        flat = logits.float().reshape(-1, logits.shape[-1])
    except TypeError:  # a model class without logits_to_keep
        flat = model(**inputs).logits.float()[keep]
    token = torch.nn.functional.cross_entropy(flat, targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    b = keep.shape[0]
    with torch.no_grad():
        sums = torch.zeros(b, device=token.device).index_add_(0, rows, token.detach())
        counts = keep.sum(1).clamp_min(1).to(sums.dtype)
        per_example = [round(float(v), 5) for v in sums / counts]
    return token.mean(), per_example


@torch.inference_mode()
def generate(
    model: nn.Module,
    formatter: Any,
    prompts: list[str],
    max_new_tokens: int,
    settings: dict[str, Any],
    device: torch.device,
    batch_size: int = 20,
) -> list[str]:
    """Greedy answers (batched, left-padded, stop at the end-of-turn token) through the one batched decoder,
    :func:`lorafam.decoding.greedy_batch`, in the arena's numeric regime."""
    from lorafam.decoding import greedy_batch

    ids = [formatter.encode_prompt(p) for p in prompts]
    with regime(settings, device):
        rows = greedy_batch(
            model,
            ids,
            pad_id=formatter.pad_id,
            max_new_tokens=max_new_tokens,
            eos_ids=formatter.eos_id,
            batch_size=batch_size,
        )
    return [formatter.decode(row) for row in rows]
