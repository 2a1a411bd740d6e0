"""Arena probes and report helpers against hand computations (tiny models, no subprocess)."""

from __future__ import annotations

import math

import torch

import lorafam as lf
from lorafam.arena import probes
from lorafam.arena.checkers import Example
from lorafam.arena.prompts import ByteFormatter, batches, collate
from lorafam.report.claims import spikes, steps_to_reach
from lorafam.report.data import noise_floor
from lorafam.report.plots import pareto_front


def test_forgetting_matches_a_direct_kl() -> None:
    p = torch.log_softmax(torch.randn(5, 7), -1)
    q = torch.log_softmax(torch.randn(5, 7), -1)
    kl, top1 = probes.forgetting([p.to(torch.bfloat16)], [q.to(torch.bfloat16)])
    pb, qb = p.to(torch.bfloat16).float(), q.to(torch.bfloat16).float()
    direct = float((pb.exp() * (pb - qb)).sum(-1).mean())
    assert math.isclose(kl, direct, rel_tol=1e-5)
    assert top1 == float((pb.argmax(-1) == qb.argmax(-1)).float().mean())
    assert probes.forgetting([p], [p]) == (0.0, 1.0)


def test_answer_only_labels_and_epoch_batches() -> None:
    fmt = ByteFormatter()
    enc = [fmt.encode(Example(f"q{i}", f"a{i}", str(i))) for i in range(5)]
    b = collate(enc[:2], fmt.pad_id)
    assert b["input_ids"].shape[1] % 8 == 0  # training pads to a multiple of 8 (prompts.collate)
    row = b["labels"][0]
    kept = row[row != -100].tolist()
    assert kept == list(b"a0") + [fmt.EOS]  # only the answer (and its end token) is trained on
    drawn = batches(enc, 2, 5, seed=0)
    firsts = [e.answer for batch in drawn[:2] for e in batch] + [drawn[2][0].answer]
    assert len({tuple(a) for a in firsts}) == 5  # every item once before any repeats


def test_base_weight_storage_sees_nf4_packing() -> None:
    model = lf.tiny_llama(hidden=256, intermediate=512)
    lf.attach(model, lf.MEMBERS["qlora"].make_config(rank=4, alpha=8, targets=["q_proj"]))
    layers = [layer.base_layer for _, layer in lf.core.inject.adapted_layers(model)]
    nbytes, numel = probes.base_weight_storage(layers)
    assert numel == 2 * 256 * 256
    assert 4.0 <= 8 * nbytes / numel <= 4.6  # 4-bit codes + block scales (+ padding), not 16 or 32 bits
    plain = torch.nn.Linear(8, 4, bias=False)
    assert probes.base_weight_storage([plain]) == (8 * 4 * 4, 32)


def test_report_helpers() -> None:
    assert pareto_front([(10, 0.5), (5, 0.4), (20, 0.45), (30, 0.9)]) == [(5, 0.4), (10, 0.5), (30, 0.9)]
    assert spikes([[1, 3.0], [2, 1.0], [5, 1.2], [6, 2.0], [7, float("nan")]]) == 2
    assert steps_to_reach([[1, 4.0]] + [[s, 1.0] for s in range(2, 9)], 2.0) == 6  # EMA (β = 0.8) of the loss
    assert math.isclose(noise_floor([0.5], 100), 2 * math.sqrt(0.25 / 100))
    assert math.isclose(noise_floor([0.5, 0.7], 10_000), 2 * 0.1414213562, rel_tol=1e-6)  # seed spread wins


def test_batched_next_token_logprobs_equal_one_forward_per_text() -> None:
    """The forgetting probe's texts go through one right-padded forward; each text's log-probabilities are those
    of its own forward (the padding comes after every real position)."""
    import lorafam as lf

    model = lf.attach(lf.tiny_llama(seed=0), lf.LoraConfig(rank=4, targets="all-linear", init="gaussian")).eval()
    texts = [[5, 9, 33, 70, 12], [8, 8, 1], [100, 4, 5, 6, 7, 9, 11, 50]]
    got = probes.next_token_logprobs(model, texts, 0, torch.device("cpu"), {"bf16": False})
    for ids, lp in zip(texts, got):
        with torch.no_grad():
            want = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        assert lp.shape == want.shape
        assert torch.allclose(lp.float(), want.to(torch.bfloat16).float(), atol=2e-2)  # stored in bf16
    assert probes.next_token_logprobs(model, [], 0, torch.device("cpu")) == []
