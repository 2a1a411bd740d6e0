"""Dataset files and formats: read JSON / JSON Lines, detect the format from the fields, normalise.

Formats (detected per record from its fields, the first match wins):

| format              | fields                                              | trained tokens (default)          |
|---------------------|-----------------------------------------------------|-----------------------------------|
| ``alpaca``          | ``instruction``, ``output`` (+ ``input``, ``system``, ``history``) | the responses       |
| ``messages``        | ``messages: [{role, content}]`` (OpenAI)            | assistant turns                   |
| ``sharegpt``        | ``conversations: [{from, value}]``                  | ``gpt`` / assistant turns         |
| ``prompt_completion`` | ``prompt``, ``completion`` (strings or message lists) | the completion               |
| ``text``            | ``text``                                            | every token                       |

Every record becomes an :class:`Example`: either a conversation (rendered later with the tokenizer's chat
template) or a plain prompt/completion pair. Errors name the file and the line (JSONL) or the item (JSON list).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "text")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


class DatasetError(ValueError):
    """A dataset problem; the message names the file and the line or item."""


@dataclass
class Example:
    """One normalised training example.

    Either ``messages`` (a conversation; assistant turns are the targets) or ``prompt``/``completion`` plain
    strings (``prompt`` is empty for the ``text`` format, where every token is a target).
    """

    messages: list[dict[str, str]] | None = None
    prompt: str = ""
    completion: str = ""
    source: str = ""
    fmt: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReadStats:
    """What happened while reading one file."""

    path: str
    records: int = 0
    bad_lines: list[int] = field(default_factory=list)


def read_records(path: str | Path, skip_bad_lines: bool = False) -> tuple[list[tuple[str, dict]], ReadStats]:
    """Records of a ``.json`` (a list, or ``{"data": [...]}``) or ``.jsonl`` file, each with its location.

    Raises:
        DatasetError: the file is missing, or a line / the file is not valid JSON (with ``skip_bad_lines`` bad
            JSONL lines are skipped and counted instead).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"dataset: file not found: {p}")
    stats = ReadStats(path=str(p))
    text = p.read_text(encoding="utf-8")
    out: list[tuple[str, dict]] = []
    stripped = text.lstrip()
    if p.suffix == ".json" and stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{p}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DatasetError(f"{p}: expected a JSON list of records (or JSON Lines), got {type(data).__name__}")
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise DatasetError(f"{p}: item {i}: expected an object, got {type(rec).__name__}")
            out.append((f"{p}: item {i}", rec))
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise json.JSONDecodeError(f"expected an object, got {type(rec).__name__}", line, 0)
            except json.JSONDecodeError as exc:
                if skip_bad_lines:
                    stats.bad_lines.append(lineno)
                    continue
                raise DatasetError(
                    f"{p}: line {lineno}: invalid JSON ({exc.msg}). Fix the line or set skip_bad_lines: true"
                ) from exc
            out.append((f"{p}: line {lineno}", rec))
    stats.records = len(out)
    return out, stats


def detect_format(record: dict, where: str) -> str:
    """The format name of one record (see the module table)."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    raise DatasetError(
        f"{where}: cannot tell the format from fields {sorted(record)}. Expected one of: "
        "alpaca (instruction, input, output), messages ([{role, content}]), sharegpt (conversations: "
        "[{from, value}]), prompt_completion (prompt, completion), text (text)"
    )


def _str(record: dict, key: str, where: str, required: bool = True) -> str:
    value = record.get(key, "" if not required else None)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if required and key not in record:
        raise DatasetError(f"{where}: missing field {key!r}")
    return value


def _messages(items: Any, where: str, role_key: str, content_key: str, key: str) -> list[dict[str, str]]:
    if not isinstance(items, list) or not items:
        raise DatasetError(f"{where}: {key!r} must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(items):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise DatasetError(f"{where}: {key}[{i}] needs {role_key!r} and {content_key!r}")
        role = turn[role_key]
        if role_key == "from":
            if role not in _SHAREGPT_ROLES:
                raise DatasetError(
                    f"{where}: {key}[{i}].from={role!r} is not a known role ({', '.join(_SHAREGPT_ROLES)})"
                )
            role = _SHAREGPT_ROLES[role]
        elif role not in ("system", "user", "assistant", "tool"):
            raise DatasetError(f"{where}: {key}[{i}].role={role!r}; expected system, user, assistant or tool")
        content = turn[content_key]
        if not isinstance(content, str):
            raise DatasetError(f"{where}: {key}[{i}].{content_key} must be a string")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise DatasetError(f"{where}: {key!r} has no assistant turn to learn from")
    return out


def normalise(record: dict, where: str) -> Example:
    """Turn one raw record into an :class:`Example`."""
    fmt = detect_format(record, where)
    if fmt == "alpaca":
        instruction = _str(record, "instruction", where)
        inp = _str(record, "input", where, required=False)
        prompt = f"{instruction}\n{inp}" if inp else instruction
        msgs: list[dict[str, str]] = []
        system = _str(record, "system", where, required=False)
        if system:
            msgs.append({"role": "system", "content": system})
        for i, pair in enumerate(record.get("history") or []):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise DatasetError(f"{where}: history[{i}] must be a [question, answer] pair of strings")
            msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        msgs += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _str(record, "output", where)},
        ]
        return Example(messages=msgs, source=where, fmt=fmt)
    if fmt == "messages":
        return Example(
            messages=_messages(record["messages"], where, "role", "content", "messages"), source=where, fmt=fmt
        )
    if fmt == "sharegpt":
        return Example(
            messages=_messages(record["conversations"], where, "from", "value", "conversations"),
            source=where,
            fmt=fmt,
        )
    if fmt == "prompt_completion":
        prompt, completion = record["prompt"], record["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt-completion
            msgs = _messages(prompt + completion, where, "role", "content", "prompt+completion")
            return Example(messages=msgs, source=where, fmt=fmt)
        return Example(
            prompt=_str(record, "prompt", where),
            completion=_str(record, "completion", where),
            source=where,
            fmt=fmt,
        )
    return Example(completion=_str(record, "text", where), source=where, fmt=fmt)
