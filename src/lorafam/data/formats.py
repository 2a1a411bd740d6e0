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

TRL's conversational details are honoured: ``content`` may be a list of parts (``[{"type": "text", "text":
...}]``; non-text parts are refused by name), the ``developer`` role is OpenAI's newer name for ``system``, an
assistant turn with ``"weight": 0`` is kept as context but not trained, and a ``tools`` column plus assistant
``tool_calls`` (and ``tool`` turns) are passed to the chat template, which must render them (checked when
encoding). Files: ``.json``/``.jsonl`` here; ``.csv``, ``.parquet``, ``.arrow`` and ``save_to_disk`` folders
through the optional ``datasets`` package (``pip install 'lorafam[datasets]'``); a ``datasets.Dataset`` (or any
list of dicts) can be passed to the Python API directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
ROLES = ("system", "developer", "user", "assistant", "tool")
# message keys passed on to the chat template besides role/content (TRL / OpenAI tool calling)
_TOOL_KEYS = ("tool_calls", "name", "tool_call_id")
DATASETS_SUFFIXES = (".csv", ".parquet", ".arrow")


class DatasetError(ValueError):
    """A dataset problem; the message names the file and the line or item."""


@dataclass
class Example:
    """One normalised training example.

    Either ``messages`` (a conversation; assistant turns are the targets) or ``prompt``/``completion`` plain
    strings (``prompt`` is empty for the ``text`` format, where every token is a target).
    """

    messages: list[dict[str, Any]] | None = None
    prompt: str = ""
    completion: str = ""
    source: str = ""
    fmt: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    tools: list[Any] | None = None  # JSON schemas of the tools (TRL's ``tools`` column), for the chat template


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
    if p.is_dir() or p.suffix in DATASETS_SUFFIXES:
        return read_with_datasets(p)
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


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError(
            "reading .csv / .parquet / .arrow files and save_to_disk folders needs the optional `datasets` "
            "package: pip install 'lorafam[datasets]'"
        ) from exc
    return datasets


def read_with_datasets(p: Path, split: str = "train") -> tuple[list[tuple[str, dict]], ReadStats]:
    """Records of a csv / parquet / arrow file or a ``save_to_disk`` folder, through the ``datasets`` package.

    A folder written by ``Dataset.save_to_disk`` is loaded as it is (a ``DatasetDict`` folder gives ``split``);
    any other folder is read file by file (sorted), as LLaMA-Factory reads a ``file_name`` that is a folder.
    """
    if not p.exists():
        raise DatasetError(f"dataset: file not found: {p}")
    if p.is_dir():
        if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file():
            ds = _datasets().load_from_disk(str(p))
            if hasattr(ds, "keys") and not hasattr(ds, "column_names"):  # a DatasetDict
                if split not in ds:
                    raise DatasetError(f"{p}: no split {split!r} in this saved DatasetDict (splits: {list(ds)})")
                ds = ds[split]
            return records_of(ds, str(p))
        files = sorted(
            f for f in p.iterdir() if f.is_file() and f.suffix in (".json", ".jsonl", *DATASETS_SUFFIXES)
        )
        if not files:
            raise DatasetError(f"{p}: folder has no .json, .jsonl, .csv, .parquet or .arrow file")
        out: list[tuple[str, dict]] = []
        stats = ReadStats(path=str(p))
        for f in files:
            recs, st = read_records(f)
            out += recs
            stats.bad_lines += st.bad_lines
        stats.records = len(out)
        return out, stats
    kind = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}[p.suffix]
    ds = _datasets().Dataset
    try:
        data = {"csv": ds.from_csv, "parquet": ds.from_parquet, "arrow": ds.from_file}[kind](str(p))
    except Exception as exc:  # noqa: BLE001 - pyarrow / pandas raise many types; name the file
        raise DatasetError(f"{p}: cannot read it as {kind} ({type(exc).__name__}: {exc})") from exc
    return records_of(data, str(p))


def records_of(rows: Any, name: str = "dataset") -> tuple[list[tuple[str, dict]], ReadStats]:
    """Records of an in-memory dataset: a ``datasets.Dataset`` or any sequence of dicts (``name: row i``)."""
    out = []
    for i, rec in enumerate(rows):
        if not isinstance(rec, dict):
            raise DatasetError(f"{name}: row {i}: expected a mapping of column to value, got {type(rec).__name__}")
        out.append((f"{name}: row {i}", {k: v for k, v in rec.items() if v is not None}))
    stats = ReadStats(path=name, records=len(out))
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


def _content(value: Any, where: str) -> str:
    """A turn's text: a string, or TRL/OpenAI content parts whose text parts are joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise DatasetError(
                    f"{where}: content part {j} has type {kind!r}; only text parts ({{'type': 'text', 'text': "
                    "...}}) are supported (lorafam trains text-only models)"
                )
            texts.append(part["text"])
        return "".join(texts)
    if value is None:
        return ""
    raise DatasetError(f"{where}: content must be a string or a list of text parts, got {type(value).__name__}")


def _messages(items: Any, where: str, role_key: str, content_key: str, key: str) -> list[dict[str, Any]]:
    if not isinstance(items, list) or not items:
        raise DatasetError(f"{where}: {key!r} must be a non-empty list of turns")
    out: list[dict[str, Any]] = []
    for i, turn in enumerate(items):
        has_calls = isinstance(turn, dict) and turn.get("tool_calls")
        if not isinstance(turn, dict) or role_key not in turn or (content_key not in turn and not has_calls):
            raise DatasetError(f"{where}: {key}[{i}] needs {role_key!r} and {content_key!r}")
        role = turn[role_key]
        if role_key == "from":
            if role not in _SHAREGPT_ROLES:
                raise DatasetError(
                    f"{where}: {key}[{i}].from={role!r} is not a known role ({', '.join(_SHAREGPT_ROLES)})"
                )
            role = _SHAREGPT_ROLES[role]
        elif role not in ROLES:
            raise DatasetError(f"{where}: {key}[{i}].role={role!r}; expected one of {', '.join(ROLES)}")
        if role == "developer":  # OpenAI's newer name for the system turn (TRL accepts both)
            role = "system"
        msg: dict[str, Any] = {"role": role, "content": _content(turn.get(content_key), f"{where}: {key}[{i}]")}
        for extra in _TOOL_KEYS:
            if turn.get(extra) is not None:
                msg[extra] = turn[extra]
        if "weight" in turn:
            w = turn["weight"]
            if w not in (0, 1) or isinstance(w, bool):
                raise DatasetError(f"{where}: {key}[{i}].weight={w!r}; expected 0 (not trained) or 1 (trained)")
            if role != "assistant" and w == 1:
                raise DatasetError(
                    f"{where}: {key}[{i}].weight=1 on a {role} turn; only assistant turns are trained"
                )
            msg["weight"] = w
        out.append(msg)
    if not any(m["role"] == "assistant" for m in out):
        raise DatasetError(f"{where}: {key!r} has no assistant turn to learn from")
    return out


def parse_tools(record: dict, where: str) -> list[Any] | None:
    tools = record.get("tools")
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):  # LLaMA-Factory and some hub sets store the schemas as a JSON string
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: 'tools' is a string but not JSON ({exc.msg})") from exc
    if not isinstance(tools, list):
        raise DatasetError(f"{where}: 'tools' must be a list of tool (function) schemas")
    return tools


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
        for i, pair in enumerate(record.get("history") or []):  # (LLaMA-Factory trains history replies too)
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise DatasetError(f"{where}: history[{i}] must be a [question, answer] pair of strings")
            msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        msgs += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _str(record, "output", where)},
        ]
        return Example(messages=msgs, source=where, fmt=fmt)
    if fmt == "messages":
        msgs = _messages(record["messages"], where, "role", "content", "messages")
        return Example(messages=msgs, source=where, fmt=fmt, tools=parse_tools(record, where))
    if fmt == "sharegpt":
        msgs = _messages(record["conversations"], where, "from", "value", "conversations")
        system = record.get("system")
        if isinstance(system, str) and system and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": system})
        return Example(messages=msgs, source=where, fmt=fmt, tools=parse_tools(record, where))
    if fmt == "prompt_completion":
        prompt, completion = record["prompt"], record["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt-completion
            p_msgs = _messages(prompt + completion, where, "role", "content", "prompt+completion")
            for m in p_msgs[: len(prompt)]:  # TRL: the loss is on the completion only
                if m["role"] == "assistant":
                    m["weight"] = 0
            return Example(messages=p_msgs, source=where, fmt=fmt, tools=parse_tools(record, where))
        return Example(
            prompt=_str(record, "prompt", where),
            completion=_str(record, "completion", where),
            source=where,
            fmt=fmt,
        )
    return Example(completion=_str(record, "text", where), source=where, fmt=fmt)
