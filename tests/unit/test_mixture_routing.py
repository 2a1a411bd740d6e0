"""MoPEFT routing is the same in training (the trainer's collate + chunked loss, which call
``model.base_model``) and at inference; padding never reaches the gates, the balance loss or the statistics;
a cached call never reuses another sequence's gates (issue 10, defect 5)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import lorafam as lf
from lorafam.core.inject import adapted_layers
from lorafam.data.dataset import Row, collate
from lorafam.train.loss import causal_lm_loss
from tests.conftest import perturb_adapters

EXPERTS = ["lora", "dora", "quantum"]
A = [5, 17, 99, 3, 42, 11, 12, 60, 61]
B = [7, 8, 20, 21, 22]


def _model(router, **kw):
    model = lf.attach(lf.tiny_llama(), lf.MixtureConfig(experts=EXPERTS, rank=4, alpha=8, router=router, **kw))
    perturb_adapters(model, std=0.5)
    return model


def _mixes(model):
    return [layer.adapters["default"] for _, layer in adapted_layers(model)]


def _trainer_batch(*seqs):
    """What the trainer feeds a step: right-padded rows from the real collate (labels = the ids)."""
    return collate([Row(list(s), list(s), list(range(len(s)))) for s in seqs], pad_id=0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_sequence_gates_in_the_trainer_path_equal_inference(mode):
    model = _model("sequence")
    mixes = _mixes(model)
    want = []
    with torch.no_grad():
        for seq in (A, B):  # inference, one unpadded sequence at a time
            model.eval()(torch.tensor([seq]))
            want.append([m.last_gates[0].clone() for m in mixes])
    getattr(model, mode)()
    with torch.set_grad_enabled(mode == "train"):
        causal_lm_loss(model, _trainer_batch(A, B), chunk_size=4)  # the chunked loss: model.base_model(...)
    for i, m in enumerate(mixes):
        for row in range(2):
            torch.testing.assert_close(
                m.last_gates[row], want[row][i], atol=1e-5, rtol=1e-5
            )  # batched vs single-row sums; the padding bug was 0.1


def test_token_router_statistics_and_balance_count_only_real_tokens():
    model = _model("token", top_k=2)
    model.train()
    mixes = _mixes(model)
    sums, counts = [], []
    for seq in (A, B):  # each sequence alone, no padding anywhere
        for m in mixes:
            m.gate_sum.zero_()
            m.gate_count.zero_()
        causal_lm_loss(model, _trainer_batch(seq), chunk_size=4)
        sums.append([m.gate_sum.clone() for m in mixes])
        counts.append([m.gate_count.clone() for m in mixes])
    for m in mixes:
        m.gate_sum.zero_()
        m.gate_count.zero_()
    causal_lm_loss(model, _trainer_batch(A, B), chunk_size=4)  # B right-padded by 4
    for i, m in enumerate(mixes):
        assert float(m.gate_count) == len(A) + len(B)
        torch.testing.assert_close(m.gate_sum, sums[0][i] + sums[1][i], atol=1e-5, rtol=1e-5)  # fp32 gates
    # the balance term of the padded batch equals the one of the same real tokens without padding rows
    flat = torch.tensor([A + B])
    causal_lm_loss(model, {"input_ids": flat, "labels": flat, "attention_mask": torch.ones_like(flat)})
    unpadded_aux = [float(m._aux) for m in mixes]
    causal_lm_loss(model, _trainer_batch(A, B), chunk_size=4)
    padded_aux = [float(m._aux) for m in mixes]
    # the first adapted layer (q_proj of block 0) sees per-token inputs (normed embeddings), the same whether B
    # follows A in one row or sits in a padded row of its own; deeper layers see context, so differ
    assert padded_aux[0] == pytest.approx(unpadded_aux[0], rel=1e-5)


def test_a_cached_call_never_uses_another_sequences_gates():
    model = _model("sequence").eval()
    mix = _mixes(model)[0]
    with torch.no_grad():
        model(torch.tensor([A]), cache=DynamicCache(), use_cache=True)  # routes sequence A
        other = DynamicCache()
        with lf.disabled(model):  # a cache this mixture never routed (e.g. a base prefix cache)
            model(torch.tensor([B]), cache=other, use_cache=True)
        with pytest.raises(RuntimeError, match="did not route from its start"):
            model(torch.tensor([[9]]), cache=other, use_cache=True)
    assert mix is not None


def test_interleaved_sequences_keep_their_own_gates():
    model = _model("sequence").eval()
    mix = _mixes(model)[0]

    def run(order):
        caches = {"a": DynamicCache(), "b": DynamicCache()}
        seen = {"a": [], "b": []}
        with torch.no_grad():
            for key in order:
                seq = {"a": A, "b": B}[key]
                step = torch.tensor([seq]) if not seen[key] else torch.tensor([[13]])
                model(step, cache=caches[key], use_cache=True)
                seen[key].append(mix.last_gates.clone())
        return seen

    alone = run(["a", "a", "a", "b", "b", "b"])
    mixed = run(["a", "b", "a", "b", "a", "b"])
    for key in ("a", "b"):
        for g, h in zip(alone[key], mixed[key]):
            torch.testing.assert_close(g, h, atol=0, rtol=0)
        assert all(torch.equal(g, alone[key][0]) for g in alone[key])
    assert not torch.equal(alone["a"][0], alone["b"][0])


def test_a_cache_made_inside_the_first_call_is_continued():
    model = _model("sequence").eval()
    mix = _mixes(model)[0]
    with torch.no_grad():
        out = model(torch.tensor([A]), use_cache=True)  # the model creates the cache inside the call
        first = mix.last_gates.clone()
        model(torch.tensor([[13]]), cache=out.past_key_values, use_cache=True)
    torch.testing.assert_close(mix.last_gates, first, atol=0, rtol=0)
