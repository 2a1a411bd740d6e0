"""Teacher-forced per-item scoring: its NLL is the model's own loss, and its exact match is greedy decoding's."""

from __future__ import annotations

import torch

import lorafam as lf
from lorafam.arena import harness
from lorafam.arena.checkers import Example
from lorafam.arena.evaluate import score_items
from lorafam.arena.prompts import ByteFormatter, Encoded, collate

CPU = torch.device("cpu")
FP32 = {"bf16": False}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = lf.attach(lf.tiny_llama(seed=0), lf.LoraConfig(rank=4, targets="all-linear", init="gaussian"))
    return model.eval()


def test_nll_is_the_models_own_loss_per_item() -> None:
    model, fmt = _model(), ByteFormatter()
    items = [fmt.encode(Example(f"question {i} " * (1 + i % 3), "ans" * (1 + i % 2), str(i))) for i in range(7)]
    scores = score_items(model, items, fmt.pad_id, FP32, CPU, batch_size=3)
    for enc, nll, n in zip(items, scores.nll, scores.tokens):
        batch = collate([enc], fmt.pad_id)
        with torch.no_grad():
            loss = float(model(**batch).loss)  # transformers' own mean over the labelled tokens
        assert n == len(enc.answer)
        assert abs(nll / n - loss) < 1e-4, (nll / n, loss)


def test_exact_match_is_greedy_decodings() -> None:
    """Gold := the model's own greedy continuation (then the end-of-turn token): every item is a teacher-forced
    exact match; change one gold token and it is not — the event 'greedy decoding reproduces the gold'."""
    model, fmt = _model(), ByteFormatter()
    prompts = [f"prompt number {i}" for i in range(6)]
    greedy: list[list[int]] = []
    for p in prompts:
        ids = torch.tensor([fmt.encode_prompt(p)])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=5,
                do_sample=False,
                pad_token_id=0,
            )
        greedy.append(out[0, ids.shape[1] :].tolist())
    # the tiny model's greedy path may hit EOS early; score gold = greedy tokens up to EOS, then EOS
    gold = [g[: g.index(fmt.EOS)] if fmt.EOS in g else g for g in greedy]
    stop = []
    for p, g in zip(prompts, gold):
        ids = torch.tensor([fmt.encode_prompt(p) + g])
        with torch.no_grad():
            stop.append(int(model(input_ids=ids).logits[0, -1].argmax()) == fmt.EOS)
    right = [Encoded(fmt.encode_prompt(p), g + [fmt.EOS]) for p, g in zip(prompts, gold)]
    scores = score_items(model, right, fmt.pad_id, FP32, CPU, batch_size=4)
    # exact match ⇔ greedy reproduces the gold tokens *and then stops* (arg-max EOS after them)
    assert scores.em == [int(s) for s in stop]
    wrong = [Encoded(e.prompt, [(e.answer[0] + 1) % 250 + 4] + e.answer[1:]) for e in right]
    assert score_items(model, wrong, fmt.pad_id, FP32, CPU).em == [0] * len(wrong)
    # and the batched, padded, sorted evaluation returns each item's own result in input order
    mixed = [right[0], wrong[1], right[2], wrong[3]]
    assert score_items(model, mixed, fmt.pad_id, FP32, CPU, batch_size=3).em == [
        int(stop[0]),
        0,
        int(stop[2]),
        0,
    ]


def test_generate_helper_agrees_with_teacher_forcing_on_a_trained_item() -> None:
    """Train the tiny model to answer one prompt; the harness's batched greedy decoding and the teacher-forced
    exact match agree (both right after training)."""
    torch.manual_seed(0)
    model, fmt = lf.attach(lf.tiny_llama(seed=0), lf.LoraConfig(rank=8, targets="all-linear")), ByteFormatter()
    ex = Example("say hi", "hi!", "k")
    batch = collate([fmt.encode(ex)], fmt.pad_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(120):
        loss = harness.answer_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    tf = score_items(model, [fmt.encode(ex)], fmt.pad_id, FP32, CPU).em
    gen = harness.generate(model, fmt, [ex.prompt], 6, FP32, CPU)
    assert tf == [int(gen[0] == ex.answer)] == [1]
