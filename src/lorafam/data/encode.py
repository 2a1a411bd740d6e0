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


# LLaMA-Factory's template names, grouped by the chat format they render; the marker is a string the tokenizer's
# own template contains when it renders that format. Any of these names means "the tokenizer's own template" here
# (a note says so, and warns when the tokenizer's format is another one); ``chatml`` is also shipped for
# tokenizers without a template.
TEMPLATE_STYLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "chatml": ("<|im_start|>", ("chatml", "chatml_de", "qwen", "qwen2_vl", "qwen3", "qwen3_nothink", "qwen3_5",
                                "qwen3_5_nothink", "qwen3_6", "qwen3_vl", "qwen3_vl_nothink", "smollm", "smollm2",
                                "yi", "dbrx", "openchat", "intern2", "sailor", "opencoder", "moss_vl")),
    "llama3": ("<|start_header_id|>", ("llama3", "llama4", "llava_next_llama3", "mllama")),
    "llama2": ("[INST]", ("llama2", "llama2_zh", "mistral", "mistral_small", "ministral", "ministral3", "pixtral")),
    "gemma": ("<start_of_turn>", ("gemma", "gemma2", "gemma3", "gemma3n", "gemma4", "gemma4n", "paligemma_chat")),
    "phi": ("<|user|>", ("phi", "phi4", "phi4_mini", "phi_small", "zephyr")),
    "deepseek": ("<｜User｜>", ("deepseek", "deepseek3", "deepseekr1")),
    "other": ("", ("alpaca", "vicuna", "default", "empty", "cohere", "falcon", "glm4", "granite3", "starchat",
                   "baichuan", "chatglm3", "exaone", "olmo", "gpt_oss", "hunyuan", "telechat2", "solar")),
}  # fmt: skip
TEMPLATE_NAMES: dict[str, str] = {n: style for style, (_, names) in TEMPLATE_STYLES.items() for n in names}
# a ChatML template written for lorafam (the format is the one OpenAI documented for ChatML: a role header
# after <|im_start|>, the turn closed by <|im_end|>)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def set_template(tokenizer: Any, template: str, notes: list[str] | None = None) -> str:
    """Apply the ``template`` setting to ``tokenizer``; returns the effective mode ("chat" or "plain").

    ``auto`` uses the tokenizer's own chat template when it has one; ``plain`` renders turns as
    ``role: text`` lines; a LLaMA-Factory template name (``llama3``, ``qwen3``, ``chatml``, ...) uses the
    tokenizer's own template, with a note in ``notes`` (a warning when its format differs from the named one);
    ``chatml`` is shipped for a tokenizer without a template; any other value is a path to a Jinja file.
    """
    notes = notes if notes is not None else []
    if template == "plain":
        return "plain"
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template in TEMPLATE_NAMES:
        style = TEMPLATE_NAMES[template]
        own = getattr(tokenizer, "chat_template", None)
        if not own:
            if style != "chatml":
                raise DatasetError(
                    f"template={template!r}: this tokenizer has no chat template of its own and lorafam ships only "
                    "chatml; use template: chatml, template: plain, or the path of a Jinja chat-template file"
                )
            tokenizer.chat_template = CHATML
            notes.append(f"template {template!r}: the tokenizer has no chat template; lorafam's ChatML is used")
            return "chat"
        marker = TEMPLATE_STYLES[style][0]
        if marker and marker not in own:
            notes.append(
                f"warning: template {template!r} names the {style} format, but this tokenizer's own chat template "
                "renders another one; lorafam uses the tokenizer's template (what the model was tuned on). Give a "
                "Jinja file as template to force another format"
            )
        else:
            notes.append(f"template {template!r} (LLaMA-Factory name): the tokenizer's own chat template is used")
        return "chat"
    path = Path(template).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"template={template!r}: expected 'auto', 'plain', a LLaMA-Factory template name (e.g. chatml, "
            "llama3, qwen3) or the path of a Jinja chat-template file"
        )
    tokenizer.chat_template = path.read_text(encoding="utf-8")
    return "chat"


def _render(
    tokenizer: Any, messages: list[dict[str, Any]], mode: str, generation_prompt: bool, tools: list | None = None
) -> str:
    if mode == "chat":
        msgs = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
        kw = {"tools": tools} if tools else {}
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt, **kw)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if generation_prompt else "")


def check_tools_rendered(tokenizer: Any, ex: Example, mode: str) -> None:
    """Refuse, by name, ``tools`` or ``tool_calls`` that the chat template would silently drop."""
    msgs = ex.messages or []
    calls = any(m.get("tool_calls") for m in msgs)
    if not (ex.tools or calls):
        return
    if mode != "chat":
        what = "tools" if ex.tools else "tool_calls"
        raise DatasetError(f"{ex.source}: {what!r} need a chat template that renders them; template is plain")
    if ex.tools and _render(tokenizer, msgs, mode, False, ex.tools) == _render(tokenizer, msgs, mode, False):
        raise DatasetError(
            f"{ex.source}: 'tools' are present but this tokenizer's chat template does not render them (the text "
            "is the same with and without), so the model would never see them. Use a template that renders "
            "tools (template: path/to/template.jinja) or drop the column"
        )
    if calls:
        bare = [{k: v for k, v in m.items() if k != "tool_calls"} for m in msgs]
        if _render(tokenizer, msgs, mode, False, ex.tools) == _render(tokenizer, bare, mode, False, ex.tools):
            raise DatasetError(
                f"{ex.source}: assistant 'tool_calls' are present but this tokenizer's chat template does not "
                "render them, so they would not be trained. Use a template that renders tool_calls "
                "(template: path/to/template.jinja)"
            )


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _conversation_pieces(tokenizer: Any, ex: Example, mode: str) -> list[tuple[str, bool | None]]:
    """(text, trained) pieces: True = a reply, False = prompt (trained with train_on_prompt), None = a reply with
    ``weight: 0`` (context only, never trained)."""
    msgs = ex.messages or []
    check_tools_rendered(tokenizer, ex, mode)
    pieces: list[tuple[str, bool | None]] = []
    done = 0
    tools = ex.tools
    full = _render(tokenizer, msgs, mode, False, tools)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = _render(tokenizer, msgs[:i], mode, True, tools)
        upto = _render(tokenizer, msgs[: i + 1], mode, False, tools)
        if not (upto.startswith(prefix) and full.startswith(upto) and len(prefix) >= done):
            raise DatasetError(
                f"{ex.source}: the chat template does not render turn by turn (its text for the first {i} turns "
                "is not a prefix of the whole conversation), so prompt tokens cannot be masked exactly. "
                "Use template: plain or a template file"
            )
        pieces.append((prefix[done:], False))
        pieces.append((upto[len(prefix) :], True if m.get("weight", 1) != 0 else None))  # None: never trained
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
            trained = target is True or (target is False and train_on_prompt)
            labels += piece if trained else [IGNORE_INDEX] * len(piece)
    else:
        prompt = list(tokenizer(ex.prompt, add_special_tokens=True)["input_ids"]) if ex.prompt else []
        completion = _ids(tokenizer, ex.completion) + ([eos] if eos is not None else [])
        ids = prompt + completion
        labels = (prompt if train_on_prompt else [IGNORE_INDEX] * len(prompt)) + completion
    truncated = len(ids) > cutoff_len
    return Encoded(ids[:cutoff_len], labels[:cutoff_len], truncated=truncated, source=ex.source)
