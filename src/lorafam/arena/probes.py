"""Probes beside accuracy: forgetting, adapter size, merge time, decode speed, base weight storage.

Each probe returns plain numbers (or ``None`` when it does not apply) and never formats prose.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lorafam.arena.built import Built
from lorafam.arena.checkers import Example
from lorafam.arena.harness import regime
from lorafam.arena.prompts import GENERAL_PROMPTS
from lorafam.decoding import left_pad


def general_inputs(formatter: Any, n: int) -> list[list[int]]:
    """Token ids of the first ``n`` general prompts with their reference replies (teacher forcing)."""
    out = []
    for q, a in GENERAL_PROMPTS[:n]:
        enc = formatter.encode(Example(q, a, q))
        out.append(enc.prompt + enc.answer)
    return out


@torch.inference_mode()
def next_token_logprobs(
    model: nn.Module,
    inputs: list[list[int]],
    pad_id: int,
    device: torch.device,
    settings: dict[str, Any] | None = None,
) -> list[torch.Tensor]:
    """Per text, the (T, vocab) log-probabilities of the next token, stored in bf16 to keep memory small.

    All texts go through one right-padded forward (a causal model's outputs at a row's real positions do not see
    the padding after them; ``tests/unit/test_arena_probes.py`` checks them against one forward per text).
    ``settings`` None: plain fp32 forward (the pristine reference); otherwise the arena's regime.
    """
    if not inputs:
        return []
    width = max(len(ids) for ids in inputs)
    ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for i, row in enumerate(inputs):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if settings is None:
        logits = model(**batch).logits
    else:
        with regime(settings, device):
            logits = model(**batch).logits
    return [
        F.log_softmax(logits[i, : len(row)].float(), dim=-1).to(torch.bfloat16).cpu()
        for i, row in enumerate(inputs)
    ]


def forgetting_per_text(reference: list[torch.Tensor], tuned: list[torch.Tensor]) -> list[float]:
    """Mean KL(base ‖ tuned) per token of each general text (the unit the report bootstraps over)."""
    out = []
    for ref, cur in zip(reference, tuned):
        p_log, q_log = ref.float(), cur.float()
        out.append(float((p_log.exp() * (p_log - q_log)).sum(dim=-1).clamp_min(0).mean()))
    return out


def forgetting(reference: list[torch.Tensor], tuned: list[torch.Tensor]) -> tuple[float, float]:
    """(mean KL(base ‖ tuned) in nats per token, top-1 agreement) over every position of every text."""
    kl_sum, agree, count = 0.0, 0, 0
    for ref, cur in zip(reference, tuned):
        p_log, q_log = ref.float(), cur.float()
        kl = (p_log.exp() * (p_log - q_log)).sum(dim=-1)  # (T,)
        kl_sum += float(kl.clamp_min(0).sum())
        agree += int((p_log.argmax(-1) == q_log.argmax(-1)).sum())
        count += kl.numel()
    return kl_sum / count, agree / count


@torch.inference_mode()
def decode_speed(
    model: nn.Module,
    prompt_ids: list[int],
    n_tokens: int,
    pad_id: int,
    device: torch.device,
    settings: dict[str, Any],
    repeats: int = 2,
) -> float:
    """Tokens per second of greedy batch-1 decoding of exactly ``n_tokens`` tokens (best of ``repeats``)."""
    enc = {k: v.to(device) for k, v in left_pad([prompt_ids], pad_id).items()}
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with regime(settings, device):
            model.generate(
                **enc, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False, pad_token_id=pad_id
            )
        best = min(best, time.perf_counter() - start)
    return n_tokens / best


def adapter_bytes(built: Built) -> int | None:
    """Bytes on disk of the saved adapter folder (PEFT layout), or None when the run has no adapter."""
    if built.save is None:
        return None
    with tempfile.TemporaryDirectory(prefix="lorafam-arena-") as tmp:
        out = os.path.join(tmp, "adapter")
        built.save(out)
        return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())


def merge_seconds(built: Built) -> float | None:
    """Seconds to fold the adapter into the base (then unfolded again), or None if it cannot merge."""
    if built.merge is None or not built.mergeable:
        return None
    start = time.perf_counter()
    with torch.no_grad():
        built.merge()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        built.unmerge()
    return seconds


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes of a tensor, looking inside tensor subclasses (NF4 keeps packed codes + scales)."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def base_weight_storage(bases: list[nn.Module]) -> tuple[int, int] | None:
    """(bytes, logical weights) of the frozen weights of the adapted base layers; None if there are none."""
    if not bases:
        return None
    total_bytes = total_numel = 0
    for layer in bases:
        in_f = getattr(layer, "in_features", None)
        out_f = getattr(layer, "out_features", None)
        w = getattr(layer, "weight", None)
        if isinstance(w, torch.Tensor):
            total_bytes += tensor_bytes(w)
        else:
            total_bytes += sum(tensor_bytes(t) for t in list(layer.parameters()) + list(layer.buffers()))
        if in_f and out_f:
            total_numel += int(in_f) * int(out_f)
        elif isinstance(w, torch.Tensor):
            total_numel += w.numel()
    return total_bytes, total_numel


def param_scaling(
    member: str, settings: dict[str, Any], formatter: Any, sizes: tuple[int, ...] = (256, 1024, 4096)
) -> list[list[int]] | None:
    """Trainable parameters of the member on one square N×N linear layer, for each N (how the count grows)."""
    from lorafam.arena.built import member_config
    from lorafam.core.inject import attach, count_params

    out = []
    try:
        for n in sizes:
            layer = nn.Sequential(nn.Linear(n, n, bias=False))
            cfg = member_config(member, {**settings, "targets": "all-linear"}, formatter, 10)
            attach(layer, cfg)
            out.append([n, count_params(layer)[0]])
    except Exception:  # noqa: BLE001 - a member that needs a full transformer simply has no scaling probe
        return None
    return out
