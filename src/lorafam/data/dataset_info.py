"""LLaMA-Factory's ``dataset_info.json``: datasets named in a catalogue file instead of given as paths.

``dataset: identity,alpaca_en_demo`` with ``dataset_dir: data`` looks both names up in
``data/dataset_info.json``. An entry gives ``file_name`` (a file or a folder under ``dataset_dir``), the
``formatting`` (``alpaca`` by default, ``sharegpt`` or ``openai``), ``columns`` (which record fields hold the
prompt, query, response, history, system, tools or messages) and, for sharegpt, ``tags`` (which role names mean
user, assistant, observation, function call and system). ``num_samples`` keeps the first N records; ``split``
picks a split of a ``save_to_disk`` DatasetDict folder. Each record is rewritten into the canonical fields of
:mod:`lorafam.data.formats` and normalised from there, so masking and chat templates work as for any file.

Entries that download (``hf_hub_url``, ``ms_hub_url``, ``om_hub_url``, ``script_url``, ``cloud_file_name``),
preference data (``ranking: true``, ``chosen``/``rejected``/``kto_tag`` columns) and multimodal columns
(``images``, ``videos``, ``audios``) are refused by name, with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafam.data.formats import DatasetError, Example, normalise, read_records

INFO_NAME = "dataset_info.json"
_ENTRY_KEYS = {"file_name", "formatting", "ranking", "subset", "split", "folder", "num_samples", "columns", "tags"}
_DOWNLOADS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_COLUMNS = {"prompt", "query", "response", "history", "messages", "system", "tools"}
_REFUSED_COLUMNS = {
    "images": "multimodal input (lorafam trains text-only models)",
    "videos": "multimodal input (lorafam trains text-only models)",
    "audios": "multimodal input (lorafam trains text-only models)",
    "chosen": "preference data, for dpo/rm stages that lorafam does not have",
    "rejected": "preference data, for dpo/rm stages that lorafam does not have",
    "kto_tag": "KTO feedback, for the kto stage that lorafam does not have",
}
_SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
_OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}


@dataclass
class InfoEntry:
    """One validated ``dataset_info.json`` entry."""

    name: str
    path: Path
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    num_samples: int | None = None
    split: str = "train"


def read_info(dataset_dir: str | Path) -> dict[str, Any] | None:
    """The parsed ``dataset_info.json`` of ``dataset_dir`` (None when there is none)."""
    path = Path(dataset_dir).expanduser() / INFO_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected an object mapping dataset names to descriptions")
    return data


def entry(name: str, dataset_dir: str | Path) -> InfoEntry:
    """Look ``name`` up in ``dataset_dir/dataset_info.json`` and validate its description."""
    root = Path(dataset_dir).expanduser()
    info = read_info(root)
    where = root / INFO_NAME
    if info is None:
        raise DatasetError(
            f"dataset: {name!r} is not a file, and {where} does not exist to look it up in "
            "(set dataset to a .json/.jsonl/.csv/.parquet path, or dataset_dir to the folder of dataset_info.json)"
        )
    if name not in info:
        raise DatasetError(
            f"dataset: {name!r} is not a file and not defined in {where} (defined: {', '.join(info)})"
        )
    d = info[name]
    if not isinstance(d, dict):
        raise DatasetError(f"{where}: {name}: expected an object")
    src = f"{where}: {name}"
    for key in _DOWNLOADS:
        if key in d:
            raise DatasetError(
                f"{src}: {key!r} points at a remote dataset; lorafam downloads nothing. Save the data under "
                f"{root} and give its file_name instead"
            )
    unknown = sorted(set(d) - _ENTRY_KEYS)
    if unknown:
        raise DatasetError(f"{src}: unknown keys {unknown}; known: {', '.join(sorted(_ENTRY_KEYS))}")
    if d.get("ranking"):
        raise DatasetError(
            f"{src}: ranking: true is preference data, for dpo/rm stages that lorafam does not have"
        )
    if "file_name" not in d:
        raise DatasetError(f"{src}: 'file_name' is required (the file or folder under {root})")
    formatting = d.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt", "openai"):
        raise DatasetError(f"{src}: formatting={formatting!r}; expected alpaca, sharegpt or openai")
    columns = dict(d.get("columns") or {})
    for col in columns:
        if col in _REFUSED_COLUMNS:
            raise DatasetError(f"{src}: column {col!r} is {_REFUSED_COLUMNS[col]}")
        if col not in _COLUMNS:
            raise DatasetError(f"{src}: unknown column {col!r}; known: {', '.join(sorted(_COLUMNS))}")
    tags = dict(d.get("tags") or {})
    unknown_tags = sorted(set(tags) - set(_SHAREGPT_TAGS))
    if unknown_tags:
        raise DatasetError(f"{src}: unknown tags {unknown_tags}; known: {', '.join(_SHAREGPT_TAGS)}")
    if tags and formatting == "alpaca":
        raise DatasetError(f"{src}: 'tags' apply to the sharegpt/openai formatting, not alpaca")
    n = d.get("num_samples")
    if n is not None and (not isinstance(n, int) or n < 1):
        raise DatasetError(f"{src}: num_samples={n!r}; expected a positive integer")
    return InfoEntry(name, root / d["file_name"], formatting, columns, tags, n, d.get("split", "train"))


def examples(e: InfoEntry, skip_bad_lines: bool = False) -> tuple[list[Example], Any]:
    """The entry's records, rewritten by its columns/tags and normalised; also the read statistics."""
    from lorafam.data.formats import read_with_datasets

    if e.path.is_dir():
        records, stats = read_with_datasets(e.path, split=e.split)
    else:
        records, stats = read_records(e.path, skip_bad_lines=skip_bad_lines)
    if e.num_samples is not None:
        records = records[: e.num_samples]
    out = []
    for where, rec in records:
        where = f"{where} ({e.name})"
        out.append(_alpaca(rec, e, where) if e.formatting == "alpaca" else _conversation(rec, e, where))
    return out, stats


def _get(rec: dict, column: str | None, where: str, required: bool = False) -> Any:
    if column is None:
        return None
    if column not in rec:
        if required:
            raise DatasetError(f"{where}: column {column!r} (from dataset_info.json columns) is missing")
        return None
    return rec[column]


def _alpaca(rec: dict, e: InfoEntry, where: str) -> Example:
    c = {"prompt": "instruction", "query": "input", "response": "output", **e.columns}
    prompt = _get(rec, c["prompt"], where, required=True)
    response = _get(rec, c["response"], where)
    if response is None and "response" not in e.columns and c["response"] not in rec:
        # LLaMA-Factory's pre-training description: columns: {prompt: text}, no response
        return normalise({"text": prompt}, where)
    canon = {
        "instruction": prompt,
        "input": _get(rec, c["query"], where) or "",
        "output": _get(rec, c["response"], where, required=True),
    }
    system = _get(rec, c.get("system"), where)
    if system:
        canon["system"] = system
    history = _get(rec, c.get("history"), where)
    if history:
        canon["history"] = history
    ex = normalise(canon, where)
    tools = _get(rec, c.get("tools"), where)
    if tools:
        from lorafam.data.formats import parse_tools

        ex.tools = parse_tools({"tools": tools}, where)
    return ex


def _conversation(rec: dict, e: InfoEntry, where: str) -> Example:
    defaults = _SHAREGPT_TAGS if e.formatting == "sharegpt" else _OPENAI_TAGS
    t = {**defaults, **e.tags}
    c = {"messages": "conversations" if e.formatting == "sharegpt" else "messages", **e.columns}
    turns = _get(rec, c["messages"], where, required=True)
    if not isinstance(turns, list):
        raise DatasetError(f"{where}: column {c['messages']!r} must be a list of turns")
    roles = {
        t["user_tag"]: "user",
        t["assistant_tag"]: "assistant",
        t["observation_tag"]: "tool",
        t["function_tag"]: "assistant",  # a function call is the assistant's (trained) turn, as LLaMA-Factory does
        t["system_tag"]: "system",
    }
    msgs = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or t["role_tag"] not in turn:
            raise DatasetError(f"{where}: {c['messages']}[{i}] needs the role tag {t['role_tag']!r}")
        tag = turn[t["role_tag"]]
        if tag not in roles:
            raise DatasetError(
                f"{where}: {c['messages']}[{i}].{t['role_tag']}={tag!r} is none of the tags "
                f"{sorted(roles)} (set them under 'tags' in dataset_info.json)"
            )
        msg = {"role": roles[tag], "content": turn.get(t["content_tag"], "")}
        for extra in ("tool_calls", "name", "tool_call_id", "weight"):
            if extra in turn:
                msg[extra] = turn[extra]
        msgs.append(msg)
    canon: dict[str, Any] = {"messages": msgs}
    system = _get(rec, c.get("system"), where)
    if system and msgs and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system})
    tools = _get(rec, c.get("tools"), where)
    if tools:
        canon["tools"] = tools
    ex = normalise(canon, where)
    ex.fmt = e.formatting
    return ex
