"""Teacher-forced exact match equals greedy-decoding exact match on the real SmolLM2 (the arena's main metric)."""

from __future__ import annotations

import pytest
import torch

from lorafam.arena import harness
from lorafam.arena.checkers import Example
from lorafam.arena.evaluate import score_items
from lorafam.arena.prompts import ChatFormatter
from lorafam.arena.tasks import builtin_tasks
from lorafam.decoding import left_pad

pytestmark = pytest.mark.slow

CPU = torch.device("cpu")
FP32 = {"bf16": False}


def test_teacher_forced_exact_match_is_greedy_exact_match_on_smollm2() -> None:
    import lorafam as lf

    torch.manual_seed(0)
    model = lf.load_model().eval()
    fmt = ChatFormatter(lf.load_tokenizer(), system="")
    dates = builtin_tasks()["dates"].split(1, 10, seed=0)[1]  # real items: the base model gets them wrong
    easy = [
        "Reply with only the word: apple",
        "What is 2 + 3? Reply with only the number.",
        "Say only: yes",
        "What colour is the sky on a clear day? One word.",
        "Reply with only the number seven as a digit.",
        "Write the word 'cat' in capital letters, nothing else.",
        "What is the opposite of hot? One word.",
        "Reply with only: OK",
        "Say hello.",
        "What is the capital of France?",
        "Name one fruit.",
        "Is water wet? Answer yes or no.",
    ]
    # gold := the model's own greedy reply (where it stopped by itself): teacher forcing must call it right
    enc = {k: v for k, v in left_pad([fmt.encode_prompt(p) for p in easy], fmt.pad_id).items()}
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False, pad_token_id=fmt.pad_id)
    own = []
    for p, row in zip(easy, out[:, enc["input_ids"].shape[1] :].tolist()):
        if fmt.eos_id in row:  # a reply that ended by itself within the budget
            own.append(Example(p, fmt.decode(row[: row.index(fmt.eos_id)]).strip(), p))
    assert len(own) >= 2, own
    wrong = [Example(e.prompt, e.answer + "!", e.key) for e in own[:3]]  # a gold the model does not write
    items = dates + own + wrong
    tf = score_items(model, [fmt.encode(e) for e in items], fmt.pad_id, FP32, CPU, batch_size=7).em
    preds = harness.generate(model, fmt, [e.prompt for e in items], 24, FP32, CPU, batch_size=7)
    generated = [int(p.strip() == e.answer.strip()) for p, e in zip(preds, items)]
    assert tf == generated, list(zip([e.answer for e in items], preds, tf, generated))
    assert 0 < sum(tf) < len(tf)  # both outcomes occur: the agreement is not trivial
