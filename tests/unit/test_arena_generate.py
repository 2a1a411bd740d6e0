"""The arena's answers come from the one batched decoder (lorafam.decoding.greedy_batch): a left-padded batch gives
each prompt the same greedy tokens as decoding it alone, cut before the end token (issue 13: one copy of greedy
batched generation)."""

from __future__ import annotations

import torch

import lorafam as lf
from lorafam.arena import harness
from lorafam.arena.prompts import ByteFormatter


def test_batched_arena_answers_equal_one_prompt_at_a_time():
    model = lf.tiny_llama(seed=0).eval()
    fmt = ByteFormatter()
    prompts = ["ab", "a much longer prompt", "xyz 123"]
    settings = {"bf16": False}
    batched = harness.generate(model, fmt, prompts, 6, settings, torch.device("cpu"), batch_size=3)
    alone = []
    for p in prompts:
        ids = torch.tensor([fmt.encode_prompt(p)])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 pad_token_id=fmt.pad_id, eos_token_id=fmt.eos_id)[0, ids.shape[1]:].tolist()  # fmt: skip
        alone.append(fmt.decode(out[: out.index(fmt.eos_id)] if fmt.eos_id in out else out))
    assert batched == alone
