"""Turning task items into token ids: chat format, answer-only labels, padded batches.

Two formatters share one interface: :class:`ChatFormatter` (a Hugging Face tokenizer with a chat template; the
real arena) and :class:`ByteFormatter` (bytes as ids, for the tiny random test models with a 256-token vocab).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from lorafam.arena.checkers import Example

IGNORE = -100

# Fixed general prompts for the forgetting probe: everyday questions with short reference replies, written for
# this project. The probe is teacher-forced: it compares the next-token distributions of the base and the tuned
# model on exactly these texts, so it measures drift of general behaviour, not task skill.
GENERAL_PROMPTS: list[tuple[str, str]] = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Give me a tip for sleeping better.", "Keep a regular bedtime and avoid screens for an hour before sleep."),
    ("Why is the sky blue?", "Air scatters blue light more than red light, so the sky looks blue."),
    ("Write a short greeting for a friend.", "Hi! I hope you are having a wonderful day."),
    ("What do bees make?", "Bees make honey and beeswax."),
    ("Name three colours.", "Red, green and blue."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("Suggest a name for a cat.", "How about Whiskers?"),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Translate 'thank you' into French.", "Merci."),
    ("Describe the moon in one sentence.", "The moon is Earth's rocky natural satellite."),
    ("What do plants need to grow?", "Plants need light, water, air and nutrients."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is 2 + 2?", "2 + 2 is 4."),
    ("Tell me a fun fact about octopuses.", "An octopus has three hearts."),
]


@dataclass
class Encoded:
    prompt: list[int]
    answer: list[int]


class ChatFormatter:
    """Chat template of a Hugging Face tokenizer: the user turn holds the prompt, the assistant turn the answer.

    The answer ids are the assistant reply plus the end-of-turn token, which is also the stop token.
    """

    def __init__(self, tokenizer: Any, system: str | None = None):
        self.tok = tokenizer
        self.system = system  # None: the template's own default system turn (SmolLM2 writes a 17-token one)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        probe = self._prompt_text("x")
        header = probe[probe.rindex("x") + 1 :]
        # the assistant header (e.g. "<|im_end|>\n<|im_start|>assistant\n" → take the part after the last
        # end-of-turn): the invocation sequence for members that switch on at the answer (aLoRA)
        marker = tokenizer.eos_token or ""
        tail = (header.split(marker)[-1] if marker and marker in header else header).lstrip()
        self.assistant_header = tokenizer.encode(tail, add_special_tokens=False)

    def _turns(self, prompt: str) -> list[dict[str, str]]:
        head = [] if self.system is None else [{"role": "system", "content": self.system}]
        return [*head, {"role": "user", "content": prompt}]

    def _prompt_text(self, prompt: str) -> str:
        return self.tok.apply_chat_template(self._turns(prompt), tokenize=False, add_generation_prompt=True)

    def encode(self, ex: Example) -> Encoded:
        ptext = self._prompt_text(ex.prompt)
        full = self.tok.apply_chat_template(
            [*self._turns(ex.prompt), {"role": "assistant", "content": ex.answer}], tokenize=False
        )
        if not full.startswith(ptext):
            raise ValueError("the chat template renders the prompt differently with and without the answer")
        answer_text = full[len(ptext) :].rstrip("\n")
        return Encoded(
            self.tok.encode(ptext, add_special_tokens=False),
            self.tok.encode(answer_text, add_special_tokens=False),
        )

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tok.encode(self._prompt_text(prompt), add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


class ByteFormatter:
    """Bytes as token ids (tiny test models, vocab 256): ``prompt`` + SEP, then ``answer`` + EOS."""

    SEP, EOS, PAD = 3, 2, 0

    def __init__(self) -> None:
        self.pad_id, self.eos_id = self.PAD, self.EOS
        self.assistant_header = [self.SEP]

    def encode(self, ex: Example) -> Encoded:
        return Encoded(self.encode_prompt(ex.prompt), list(ex.answer.encode()) + [self.EOS])

    def encode_prompt(self, prompt: str) -> list[int]:
        return list(prompt.encode()[-200:]) + [self.SEP]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i >= 32 and i < 256).decode(errors="replace")


# ---------------------------------------------------------------------------------------------------------------
def collate(items: list[Encoded], pad_id: int, multiple: int = 8) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) ``input_ids`` / ``attention_mask`` / ``labels`` (-100 on prompt and padding).

    T is rounded up to a multiple of ``multiple`` so grouped attention (S²-Attn: 4 groups, shifted by half a
    group) always divides it; evaluation (full attention) pads to the longest item only.
    """
    length = max(len(e.prompt) + len(e.answer) for e in items)
    length = -(-length // multiple) * multiple
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
    for i, e in enumerate(items):
        seq = e.prompt + e.answer
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(e.prompt) : len(seq)] = torch.tensor(e.answer)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(encoded: list[Encoded], batch_size: int, steps: int, seed: int) -> list[list[Encoded]]:
    """``steps`` batches drawn by epochs over a seeded shuffle (every item once before any repeats)."""
    if not encoded:
        raise ValueError("no training items")
    rng = random.Random(seed)
    order: list[int] = []
    out: list[list[Encoded]] = []
    for _ in range(steps):
        batch = []
        for _ in range(batch_size):
            if not order:
                order = list(range(len(encoded)))
                rng.shuffle(order)
            batch.append(encoded[order.pop()])
        out.append(batch)
    return out
