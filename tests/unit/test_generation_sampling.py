"""Sampling flags of generate/chat (--temperature/--top-p/--top-k/--repetition-penalty/--stop/--seed), applied
through transformers' logits processors and stop-string criteria."""

from __future__ import annotations

import pytest

import lorafam as lf
from lorafam.commands._generation import Sampling, generate_batch


@pytest.fixture(scope="module")
def model_tok():
    tok = lf.load_tokenizer()
    model = lf.tiny_llama(seed=3, vocab_size=len(tok), hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64)
    return model.eval(), tok


def _gen(model_tok, sampling, n=12):
    model, tok = model_tok
    return generate_batch(model, tok, ["The cat", "A dog ran"], max_new_tokens=n, sampling=sampling)


def test_top_k_1_sampling_is_greedy(model_tok):
    greedy = _gen(model_tok, Sampling())
    assert _gen(model_tok, Sampling(temperature=1.0, top_k=1, seed=0)) == greedy


def test_a_seed_makes_sampling_reproducible(model_tok):
    a = _gen(model_tok, Sampling(temperature=1.5, top_p=0.95, seed=7))
    b = _gen(model_tok, Sampling(temperature=1.5, top_p=0.95, seed=7))
    others = {tuple(_gen(model_tok, Sampling(temperature=1.5, top_p=0.95, seed=s))) for s in range(8, 12)}
    assert a == b and len(others | {tuple(a)}) > 1


def test_repetition_penalty_stops_repeats(model_tok):
    model, tok = model_tok
    enc = tok("a a a a a a a a", return_tensors="pt")
    n = enc["input_ids"].shape[1]

    def new_tokens(sampling):
        return model.generate(**enc, max_new_tokens=80, **sampling.generate_kwargs(tok))[0, n:].tolist()

    base = new_tokens(Sampling())
    assert len(set(base)) < len(base)  # this tiny random model repeats itself over 80 tokens
    penalised = new_tokens(Sampling(repetition_penalty=1e9))
    assert len(set(penalised)) == len(penalised)  # a huge penalty forbids every token already generated


def test_stop_strings_end_generation_and_are_cut(model_tok):
    full = _gen(model_tok, Sampling(), n=16)
    word = full[0].split()[1] if len(full[0].split()) > 1 else full[0][2:4]
    cut = _gen(model_tok, Sampling(stop=[word]), n=16)
    assert word not in cut[0] and full[0].startswith(cut[0])


def test_bad_values_are_refused_by_flag():
    with pytest.raises(ValueError, match="--top-p must be in"):
        Sampling(temperature=1, top_p=1.5)
    with pytest.raises(ValueError, match="set --temperature > 0"):
        Sampling(top_k=5)
