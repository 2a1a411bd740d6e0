"""Scoring with the shared prompt prefix computed once (a KV cache copied into every batch) gives every item the
exact match and NLL of a full forward, for each kind of member; a mixture whose router reads the whole call is
scored with full forwards."""

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


def test_the_prefix_leaves_every_item_a_prompt_token() -> None:
    fmt = ByteFormatter()
    same = [fmt.encode(Example("same prompt", a, a)) for a in ("x", "yy")]
    assert shared_prefix(same) == len(same[0].prompt) - 1  # the last prompt token predicts the first answer token
    assert shared_prefix([]) == 0


def test_token_routed_mixtures_share_the_prefix_and_sequence_routed_ones_do_not() -> None:
    fmt = ByteFormatter()
    items = _items(fmt)
    plen = shared_prefix(items)
    token = _perturbed(lf.attach(lf.tiny_llama(seed=0), lf.MixtureConfig(experts=["lora", "dora"], rank=4)))
    assert prefix_reusable(token)
    full = score_items(token, items, fmt.pad_id, FP32, CPU, batch_size=3, share_prefix=False)
    shared = score_items(token, items, fmt.pad_id, FP32, CPU, batch_size=3, share_prefix=True)
    assert shared.em == full.em
    assert max(abs(a - b) for a, b in zip(shared.nll, full.nll)) < 1e-4
    assert full.gates is not None and shared.gates is not None
    # with the prefix shared, an item's gates are the mean over its own tokens after the prefix: recompute them
    # from one full forward of each item alone
    from lorafam.arena.evaluate import _mixture_adapters

    for enc, got in zip(items, shared.gates):
        ids = torch.tensor([enc.prompt + enc.answer])
        with torch.no_grad():
            token(input_ids=ids)
        per_layer = [ad.last_gates[0, plen:].float().mean(0) for ad in _mixture_adapters(token)]
        want = torch.stack(per_layer).mean(0)
        assert torch.allclose(torch.tensor(got), want, atol=1e-4), (got, want)
    seq = lf.attach(lf.tiny_llama(seed=0), lf.MixtureConfig(experts=["lora", "dora"], rank=4, router="sequence"))
    assert not prefix_reusable(seq)
    a = score_items(_perturbed(seq), items, fmt.pad_id, FP32, CPU, share_prefix=True)
    b = score_items(seq, items, fmt.pad_id, FP32, CPU, share_prefix=False)
    assert a.nll == b.nll and a.em == b.em and a.gates == b.gates
