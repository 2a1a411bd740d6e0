"""AdaLoRA's recommended defaults move the loss of the real default model within a few steps (PEFT's defaults at
lr 2e-4 do not: Λ starts at zero). Measured at length in benchmarks/adalora.py; this is the quick check."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F

import lorafam as lf
from lorafam.methods.adalora import RECOMMENDED_LR
from lorafam.train.callbacks import callbacks_for

pytestmark = pytest.mark.slow


def _rows(tok, n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        msgs = [{"role": "user", "content": f"What is {a} + {b}? Reply with only the number."}]
        p = tok(
            tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), add_special_tokens=False
        )
        ans = tok(f"{a + b}{tok.eos_token}", add_special_tokens=False).input_ids
        out.append((p.input_ids + ans, [-100] * len(p.input_ids) + ans))
    n_max = max(len(x) for x, _ in out)
    ids = torch.full((n, n_max), tok.pad_token_id)
    labels = torch.full((n, n_max), -100)
    for i, (x, y) in enumerate(out):
        ids[i, : len(x)], labels[i, : len(y)] = torch.tensor(x), torch.tensor(y)
    return ids, labels


def _nll(model, ids, labels):
    logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def test_recommended_defaults_move_the_loss_on_smollm2(smollm2):
    base, tok = smollm2
    model = lf.attach(copy.deepcopy(base), lf.AdaLoraConfig(targets="all-linear"))  # defaults: r 12 → 8, α 16
    steps = 5
    (cb,) = callbacks_for(model, steps)
    opt = lf.make_optimizer(model, lr=RECOMMENDED_LR)
    held_ids, held_labels = _rows(tok, 16, seed=1)
    with torch.no_grad():
        before = float(_nll(model, held_ids, held_labels))
    torch.manual_seed(0)
    for step in range(1, steps + 1):
        ids, labels = _rows(tok, 4, seed=100 + step)
        (_nll(model, ids, labels) + cb.extra_loss(model)).backward()
        opt.step()
        cb.on_optimizer_step(step, model)
        opt.zero_grad()
    with torch.no_grad():
        after = float(_nll(model, held_ids, held_labels))
    print(f"held-out answer NLL {before:.3f} -> {after:.3f}")
    assert after < before - 0.3, f"held-out answer NLL {before:.3f} → {after:.3f}: AdaLoRA did not learn"
    assert cb.logs()["adalora_ranks"] == cb.target_bgt  # and the budget reached its target
