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
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lorafam.arena.formatting import ByteFormatter, ChatFormatter, left_pad


@dataclass
class Built:
    """A model ready to train, with the handles the probes need."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    callbacks: list[Any] = field(default_factory=list)
    adapter_config: dict[str, Any] = field(default_factory=dict)
    disabled: Callable[[], contextlib.AbstractContextManager] | None = None  # base behaviour, if available
    merge: Callable[[], None] | None = None
    unmerge: Callable[[], None] | None = None
    save: Callable[[str], None] | None = None
    after_backward: Callable[[int], None] | None = None  # PEFT AdaLoRA's update_and_allocate
    mergeable: bool | None = None
    not_mergeable_reason: str = ""
    adapted_bases: list[nn.Module] = field(default_factory=list)


def load_base(settings: dict[str, Any], device: torch.device) -> tuple[nn.Module, Any]:
    """(model, formatter) for ``settings["model"]``: "default" (embedded SmolLM2), "tiny-llama", "tiny-gpt2", or a
    local transformers folder."""
    import lorafam as lf

    name = settings.get("model", "default")
    if name == "tiny-llama":
        return lf.tiny_llama(seed=0).to(device), ByteFormatter()
    if name == "tiny-gpt2":
        return lf.tiny_gpt2(seed=0).to(device), ByteFormatter()
    path = None if name == "default" else name
    return lf.load_model(path, device=device), ChatFormatter(lf.load_tokenizer(path))


# ---------------------------------------------------------------------------------------------------------------
def member_config(member_name: str, settings: dict[str, Any], formatter: Any, steps: int) -> Any:
    """The member's config from the registry with the arena's common fields; fields some members need are filled
    generically by name (``total_step`` ← steps; an invocation sequence ← the assistant header)."""
    from lorafam.family import MEMBERS, METHODS

    m = MEMBERS[member_name]
    cls = METHODS[m.method].config_cls
    names = {f.name for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {}
    for key in ("rank", "alpha", "dropout", "targets"):
        if key in names and key not in m.preset:
            kw[key] = settings[key]
    if "total_step" in names and "total_step" not in m.preset:
        kw["total_step"] = steps
    if (
        "invocation_tokens" in names
        and not m.preset.get("invocation_tokens")
        and not m.preset.get("invocation_string")
    ):
        kw["invocation_tokens"] = list(formatter.assistant_header)
    kw.update(settings.get("config_overrides") or {})
    return m.make_config(**kw)


def build(
    impl: str, member_name: str, model: nn.Module, settings: dict[str, Any], formatter: Any, steps: int
) -> Built:
    if impl == "lorafam":
        return _build_lorafam(member_name, model, settings, formatter, steps)
    if impl == "peft":
        return _build_peft(member_name, model, settings, formatter, steps)
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
    import lorafam as lf
    from lorafam.core.inject import adapted_layers
    from lorafam.family import MEMBERS, spec_for_config
    from lorafam.train.callbacks import callbacks_for

    cfg = member_config(member_name, settings, formatter, steps)
    lf.attach(model, cfg)
    opts = {k: v for k, v in MEMBERS[member_name].train_options.items() if k in _OPT_KEYS}
    opt = lf.make_optimizer(model, lr=settings["lr"], **opts)
    adapter_cls = spec_for_config(cfg).adapter_cls
    return Built(
        model,
        opt,
        callbacks=callbacks_for(model, steps),
        adapter_config=cfg.to_dict(),
        disabled=lambda: lf.disabled(model),
        merge=lambda: lf.merge(model),
        unmerge=lambda: lf.unmerge(model),
        save=lambda path: lf.save_adapter(model, path),
        mergeable=bool(getattr(adapter_cls, "mergeable", True)),
        not_mergeable_reason=str(getattr(adapter_cls, "not_mergeable_reason", "")),
        adapted_bases=[layer.base_layer for _, layer in adapted_layers(model)],
    )


_OPT_KEYS = {"loraplus_ratio", "loraplus_lr_embedding", "weight_decay", "optimizer"}


class PeerUnavailable(RuntimeError):
    """PEFT cannot run this member here (the run is recorded as skipped, with the reason)."""


def _build_peft(member_name: str, model: nn.Module, settings: dict[str, Any], formatter: Any, steps: int) -> Built:
    import peft

    from lorafam.core.inject import adaptable_layers, match_targets
    from lorafam.family import MEMBERS

    cfg = member_config(member_name, settings, formatter, steps)
    if getattr(cfg, "quantize", None):
        raise PeerUnavailable(
            f"PEFT's 4-bit base needs bitsandbytes' CUDA/CPU kernels (quantize={cfg.quantize!r}); not run here"
        )
    if not hasattr(cfg, "to_peft"):
        raise PeerUnavailable(f"{type(cfg).__name__} has no PEFT translation (to_peft)")
    d = dict(cfg.to_peft())
    peft_type = d.pop("peft_type")
    config_cls = peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    known = {f.name for f in dataclasses.fields(config_cls)}
    kw = {k: v for k, v in d.items() if k in known}
    kw["target_modules"] = match_targets(list(adaptable_layers(model)), cfg.targets, cfg.exclude)
    kw["task_type"] = "CAUSAL_LM"
    pm = peft.get_peft_model(model, config_cls(**kw))
    ratio = MEMBERS[member_name].train_options.get("loraplus_ratio")
    if ratio:
        from peft.optimizers import create_loraplus_optimizer

        opt = create_loraplus_optimizer(pm, torch.optim.AdamW, lr=settings["lr"], loraplus_lr_ratio=ratio)
    else:
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=settings["lr"])
    after = None
    if peft_type == "ADALORA":
        after = lambda step: pm.base_model.update_and_allocate(step)  # noqa: E731
    mergeable = not kw.get("alora_invocation_tokens")
    bases = [m.base_layer for m in pm.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    return Built(
        pm,
        opt,
        adapter_config={"peft_type": peft_type, **{k: v for k, v in kw.items() if k != "target_modules"}},
        disabled=pm.disable_adapter,
        merge=pm.merge_adapter,
        unmerge=pm.unmerge_adapter,
        save=lambda path: pm.save_pretrained(path),
        after_backward=after,
        mergeable=mergeable,
        not_mergeable_reason="" if mergeable else "aLoRA's token mask cannot be folded into W",
        adapted_bases=bases,
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
    """The shared loop: linear warm-up then constant lr, grad clipping, member callbacks; returns timings."""
    model, opt = built.model, built.optimizer
    assert opt is not None
    model.train()
    base_lrs = [g["lr"] for g in opt.param_groups]
    params = [p for g in opt.param_groups for p in g["params"]]
    warm = max(int(settings.get("warmup_steps", 0)), 0)
    for cb in built.callbacks:
        cb.on_train_begin(model, len(batches))
    curve: list[list[float]] = []
    tokens = 0
    start = time.perf_counter()
    for step, batch in enumerate(batches, 1):
        scale = min(1.0, step / warm) if warm else 1.0
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        batch = {k: v.to(device) for k, v in batch.items()}
        with regime(settings, device):
            loss = answer_loss(model, batch)
            for cb in built.callbacks:
                extra = cb.extra_loss(model)
                if extra is not None:
                    loss = loss + extra
        loss.backward()
        for cb in built.callbacks:
            cb.on_after_backward(step, model)
        if settings.get("clip"):
            torch.nn.utils.clip_grad_norm_(params, float(settings["clip"]))
        opt.step()
        for cb in built.callbacks:
            cb.on_optimizer_step(step, model)
        if built.after_backward is not None:
            built.after_backward(step)
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        curve.append([step, float(loss.detach())])
        if on_step is not None:
            on_step(step, curve[-1][1])
    seconds = time.perf_counter() - start
    model.eval()
    n = max(len(batches), 1)
    return {
        "loss_curve": curve,
        "train_seconds": seconds,
        "seconds_per_step": seconds / n,
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
    }


def answer_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (answer) positions, with the output head applied only there.

    The same value as ``model(**batch).loss``, but the vocabulary projection (576 × 49,152 on SmolLM2, a fifth of
    the model's FLOPs per token) runs on the answer tokens only, through transformers' ``logits_to_keep`` (a
    boolean mask). It goes through the model's own forward, so PEFT's wrappers and hooks (aLoRA offsets) apply
    unchanged; models without ``logits_to_keep`` fall back to the full loss.
    """
    from lorafam.train.loss import shifted_targets

    targets = shifted_targets(batch["labels"])
    keep = targets != -100
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    try:
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    except TypeError:  # a model class without logits_to_keep
        return model(**batch).loss
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets[keep])


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
    """Greedy answers (batched, left-padded, stop at the end-of-turn token)."""
    outs: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = left_pad([formatter.encode_prompt(p) for p in prompts[i : i + batch_size]], formatter.pad_id)
        enc = {k: v.to(device) for k, v in enc.items()}
        with regime(settings, device):
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=formatter.pad_id,
                eos_token_id=formatter.eos_id,
            )
        for row in gen[:, enc["input_ids"].shape[1] :].tolist():
            if formatter.eos_id in row:
                row = row[: row.index(formatter.eos_id)]
            outs.append(formatter.decode(row))
    return outs
