"""Conversations → prompt token ids, with the adapter folder's chat template or the tokenizer's own."""

from __future__ import annotations

from typing import Any

from lorafam.serve.requests import EngineError


def chat_prompt(tok: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text of ``messages`` with the tokenizer's chat template, or ``role: content`` lines without one."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def render_chat(
    tok: Any, messages: list[dict[str, str]], template: str | None, add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of a conversation, with the adapter's chat template when it has one, else the tokenizer's."""
    if template is None and not getattr(tok, "chat_template", None):
        text = chat_prompt(tok, messages)
    else:
        try:
            text = tok.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja errors from a bad template or unsupported roles
            raise EngineError(f"messages: the chat template cannot render them ({exc})", 400, "messages") from exc
    return tok(text, add_special_tokens=False).input_ids
