"""aLoRA against the naive paper rule in tests/reference, and the base-equality property the method exists for."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorafam as lf
from lorafam.core.inject import adapted_layers
from tests.conftest import perturb_adapters
from tests.reference.alora_ref import NaiveALoraLinear, last_invocation_start

INV = [7, 9]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _batch() -> torch.Tensor:
    """Rows: two occurrences (the last counts), none, at the very start, ending exactly at the last token."""
    x = torch.randint(10, 256, (4, 18), generator=torch.Generator().manual_seed(2))
    x[0, 3:5] = torch.tensor(INV)
    x[0, 11:13] = torch.tensor(INV)
    x[2, 0:2] = torch.tensor(INV)
    x[3, 16:18] = torch.tensor(INV)
    return x


def _alora_model(targets=LLAMA_TARGETS):
    model = lf.attach(lf.tiny_llama(), lf.ALoraConfig(rank=4, alpha=8, targets=targets, invocation_tokens=INV))
    perturb_adapters(model, std=0.2)
    return model


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def test_model_matches_naive_transcription():
    model = _alora_model()
    naive = lf.tiny_llama()
    ctx: dict = {}
    for path, layer in adapted_layers(model):
        ad = layer.adapters["default"]
        base = layer.base_layer
        _set(
            naive,
            path,
            NaiveALoraLinear(base.weight, base.bias, ad.lora_A.detach(), ad.lora_B.detach(), 8, 4, ctx),
        )
    x = _batch()
    ctx["starts"] = [last_invocation_start(row, INV) for row in x.tolist()]
    assert ctx["starts"] == [11, None, 0, 16]
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, naive(x).logits, atol=1e-5, rtol=1e-5)


def test_search_matches_naive_scan():
    from lorafam.methods.alora import last_occurrence

    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3):
        ids = torch.randint(0, 4, (32, 12), generator=g)  # a 4-token vocabulary: many (overlapping) hits
        pattern = ids[0, :k].clone()
        got = last_occurrence(ids, pattern).tolist()
        want = [last_invocation_start(row, pattern.tolist()) for row in ids.tolist()]
        assert got == [-1 if w is None else w for w in want]
    assert last_occurrence(torch.tensor([[1, 2]]), torch.tensor([1, 2, 3])).tolist() == [-1]


def test_hidden_states_and_kv_before_invocation_equal_base_exactly():
    model = _alora_model()
    base = lf.tiny_llama()
    x = _batch()
    starts = [last_invocation_start(row, INV) for row in x.tolist()]
    with torch.no_grad():
        ours = model(x, output_hidden_states=True, use_cache=True)
        ref = base(x, output_hidden_states=True, use_cache=True)
    changed = False
    for row, start in enumerate(starts):
        upto = x.shape[1] if start is None else start
        for h_ours, h_ref in zip(ours.hidden_states, ref.hidden_states):
            assert torch.equal(h_ours[row, :upto], h_ref[row, :upto]), f"row {row}: hidden state before t*"
        for lo, lr in zip(ours.cache.layers, ref.cache.layers):
            assert torch.equal(lo.keys[row, :, :upto], lr.keys[row, :, :upto]), f"row {row}: keys before t*"
            assert torch.equal(lo.values[row, :, :upto], lr.values[row, :, :upto]), f"row {row}: values"
        if start is not None:
            changed |= not torch.equal(ours.hidden_states[-1][row, start:], ref.hidden_states[-1][row, start:])
    assert changed, "the adapter changed nothing after the invocation"


def test_calling_the_decoder_body_directly_sees_the_invocation():
    """A chunked loss runs ``model.base_model(...)`` and applies the head itself: same hidden states."""
    model = _alora_model()
    x = _batch()
    with torch.no_grad():
        full = model(x, output_hidden_states=True).hidden_states[-1]
        body = model.base_model(input_ids=x).last_hidden_state
    torch.testing.assert_close(body, full, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_training_gradients_come_only_from_activated_tokens(arch):
    make = {"llama": lf.tiny_llama, "gpt2": lf.tiny_gpt2}[arch]
    model = lf.attach(make(), lf.ALoraConfig(rank=4, alpha=8, invocation_tokens=INV))
    perturb_adapters(model, std=0.2)
    model.train()
    x = _batch()
    # rows 1 (no invocation) only: the loss does not depend on the adapter at all
    out = model(x[1:2], labels=x[1:2])
    assert not out.loss.requires_grad
    out = model(x, labels=x)
    out.loss.backward()
    assert all(p.grad.abs().sum() > 0 for _, p, _, _ in lf.core.inject.named_adapter_params(model))
