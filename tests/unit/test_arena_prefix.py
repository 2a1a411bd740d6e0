"""Scoring with the shared prompt prefix computed once (a KV cache copied into every batch) gives every item the
exact match and NLL of a full forward, for each kind of member; mixtures, whose router may read the whole call,
are scored with full forwards."""

from __future__ import annotations

import pytest
import torch

import lorafam as lf
from lorafam.arena.checkers import Example
from lorafam.arena.evaluate import prefix_reusable, score_items, shared_prefix
from lorafam.arena.prompts import ByteFormatter, Encoded

CPU = torch.device("cpu")
FP32 = {"bf16": False}

CONFIGS = {
    "base": None,
    "lora": lf.LoraConfig(rank=4, targets="all-linear", init="gaussian"),
    "dora": lf.DoraConfig(rank=4, targets="all-linear", init="gaussian"),
    "alora": lf.ALoraConfig(rank=4, targets="all-linear", init="gaussian", invocation_tokens=[ByteFormatter.SEP]),
    "quantum": lf.QuantumConfig(rank=4, targets="all-linear"),
    "longlora": lf.LongLoraConfig(rank=4, targets="all-linear", init="gaussian"),
}


def _items(fmt: ByteFormatter) -> list[Encoded]:
    words = ["alpha", "be", "gamma delta", "eps", "zeta eta theta", "iota", "kappa", "lambda mu"]
    return [fmt.encode(Example(f"Convert the phrase {w} to upper case.", w.upper(), w)) for w in words]


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Trainable parameters moved off their init, so every adapter changes the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prefix_shared_scoring_equals_full_forwards(name: str, arch: str) -> None:
    fmt = ByteFormatter()
    model = lf.tiny_llama(seed=0) if arch == "llama" else lf.tiny_gpt2(seed=0)
    if CONFIGS[name] is not None:
        model = lf.attach(model, CONFIGS[name])
    model = _perturbed(model)
    items = _items(fmt)
    assert shared_prefix(items) == len(b"Convert the phrase ")  # the check below really uses a prefix
    assert prefix_reusable(model)
    full = score_items(model, items, fmt.pad_id, FP32, CPU, batch_size=3, share_prefix=False)
    shared = score_items(model, items, fmt.pad_id, FP32, CPU, batch_size=3, share_prefix=True)
    assert shared.em == full.em
    assert shared.tokens == full.tokens
    assert max(abs(a - b) for a, b in zip(shared.nll, full.nll)) < 1e-4, (shared.nll, full.nll)
    assert len(set(full.nll)) > 1  # the items differ, so equal lists are not a coincidence of constants


def test_the_prefix_leaves_every_item_a_prompt_token_and_mixtures_opt_out() -> None:
    fmt = ByteFormatter()
    same = [fmt.encode(Example("same prompt", a, a)) for a in ("x", "yy")]
    assert shared_prefix(same) == len(same[0].prompt) - 1  # the last prompt token predicts the first answer token
    assert shared_prefix([]) == 0
    mixture = lf.attach(lf.tiny_llama(seed=0), lf.MixtureConfig(experts=["lora", "dora"], rank=4))
    assert not prefix_reusable(mixture)
    # the mixture's scores are those of full forwards whether or not sharing is asked for
    items = _items(fmt)
    a = score_items(_perturbed(mixture), items, fmt.pad_id, FP32, CPU, share_prefix=True)
    b = score_items(mixture, items, fmt.pad_id, FP32, CPU, share_prefix=False)
    assert a.nll == b.nll and a.em == b.em and a.gates == b.gates
