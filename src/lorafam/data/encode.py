"""Tokenise examples and build the loss mask (label -100 = not trained).

Conversations are rendered with the tokenizer's chat template and split at turn boundaries: for the assistant
turn ``i``, the text of ``messages[:i]`` with the generation prompt is the prompt part, and the text of
``messages[:i+1]`` minus that is the target (the reply and the template's end-of-turn marker). Each piece is
tokenised on its own and the pieces are concatenated, so the boundary between masked and trained tokens is
exact. ``train_on_prompt`` trains on every token instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafam.data.formats import DatasetError, Example

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """Token ids and labels of one example (same length)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    source: str = ""

    @property
    def n_target(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def set_template(tokenizer: Any, template: str) -> str:
    """Apply the ``template`` setting to ``tokenizer``; returns the effective mode ("chat" or "plain").

    ``auto`` uses the tokenizer's own chat template when it has one; ``plain`` renders turns as
    ``role: text`` lines; any other value is a path to a Jinja chat-template file.
    """
    if template == "plain":
        return "plain"
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    path = Path(template).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"template={template!r}: expected 'auto', 'plain' or the path of a Jinja chat-template file"
        )
    tokenizer.chat_template = path.read_text(encoding="utf-8")
    return "chat"


def _render(tokenizer: Any, messages: list[dict[str, str]], mode: str, generation_prompt: bool) -> str:
    if mode == "chat":
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if generation_prompt else "")


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _conversation_pieces(tokenizer: Any, ex: Example, mode: str) -> list[tuple[str, bool]]:
    msgs = ex.messages or []
    pieces: list[tuple[str, bool]] = []
    done = 0
    full = _render(tokenizer, msgs, mode, False)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = _render(tokenizer, msgs[:i], mode, True)
        upto = _render(tokenizer, msgs[: i + 1], mode, False)
        if not (upto.startswith(prefix) and full.startswith(upto) and len(prefix) >= done):
            raise DatasetError(
                f"{ex.source}: the chat template does not render turn by turn (its text for the first {i} turns "
                "is not a prefix of the whole conversation), so prompt tokens cannot be masked exactly. "
                "Use template: plain or a template file"
            )
        pieces.append((prefix[done:], False))
        pieces.append((upto[len(prefix) :], True))
        done = len(upto)
    if done < len(full):
        pieces.append((full[done:], False))
    return pieces


def encode(
    tokenizer: Any,
    ex: Example,
    cutoff_len: int,
    train_on_prompt: bool = False,
    mode: str = "chat",
) -> Encoded:
    """Token ids + labels of one example, truncated to ``cutoff_len`` tokens (the beginning is kept)."""
    eos = tokenizer.eos_token_id
    if ex.messages is not None:
        pieces = _conversation_pieces(tokenizer, ex, mode)
        ids: list[int] = []
        labels: list[int] = []
        for text, target in pieces:
            piece = _ids(tokenizer, text)
            ids += piece
            labels += piece if (target or train_on_prompt) else [IGNORE_INDEX] * len(piece)
    else:
        prompt = list(tokenizer(ex.prompt, add_special_tokens=True)["input_ids"]) if ex.prompt else []
        completion = _ids(tokenizer, ex.completion) + ([eos] if eos is not None else [])
        ids = prompt + completion
        labels = (prompt if train_on_prompt else [IGNORE_INDEX] * len(prompt)) + completion
    truncated = len(ids) > cutoff_len
    return Encoded(ids[:cutoff_len], labels[:cutoff_len], truncated=truncated, source=ex.source)
