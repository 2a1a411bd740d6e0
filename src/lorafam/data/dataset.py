"""From files to batches: read, normalise, tokenise, filter, split, pack, collate.

The batch order is a pure function of ``(seed, epoch)`` so that a resumed run (or every rank of a distributed
run) sees exactly the batches an uninterrupted single process would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from lorafam.data.encode import IGNORE_INDEX, Encoded, encode, set_template
from lorafam.data.formats import DatasetError, Example, normalise, read_records, records_of

BUNDLED_PREFIX = "bundled:"


def bundled_path(name: str) -> Path:
    """Path of a dataset shipped in the package (``bundled:reverse_words`` → its ``.jsonl`` file)."""
    name = name.removeprefix(BUNDLED_PREFIX)
    path = Path(str(resources.files("lorafam.data") / "bundled" / f"{name}.jsonl"))
    if not path.is_file():
        avail = sorted(p.stem for p in path.parent.glob("*.jsonl"))
        raise DatasetError(f"dataset: no bundled dataset {name!r}; bundled: {', '.join(avail)}")
    return path


def resolve_path(spec: str) -> Path:
    return bundled_path(spec) if spec.startswith(BUNDLED_PREFIX) else Path(spec).expanduser()


@dataclass
class DataStats:
    """Counts reported to the user (and saved beside the run)."""

    files: list[str] = field(default_factory=list)
    formats: dict[str, int] = field(default_factory=dict)
    records: int = 0
    bad_lines: dict[str, list[int]] = field(default_factory=dict)
    truncated: int = 0
    dropped_no_target: int = 0
    train: int = 0
    val: int = 0
    packed_rows: int | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        bad = sum(len(v) for v in self.bad_lines.values())
        parts = [
            f"{self.records} records ({', '.join(f'{k}: {v}' for k, v in sorted(self.formats.items()))})",
            f"train {self.train}, val {self.val}",
        ]
        if self.truncated:
            parts.append(f"{self.truncated} truncated to cutoff_len")
        if self.dropped_no_target:
            parts.append(f"{self.dropped_no_target} dropped (no target token left after truncation)")
        if bad:
            parts.append(f"{bad} bad lines skipped")
        if self.packed_rows is not None:
            parts.append(f"packed into {self.packed_rows} rows")
        return "; ".join(parts) + "".join(f"\n  note: {n}" for n in self.notes)


def load_examples(
    files: list[Any],
    tokenizer: Any,
    cutoff_len: int,
    train_on_prompt: bool = False,
    template: str = "auto",
    skip_bad_lines: bool = False,
    max_samples: int | None = None,
    dataset_dir: str | Path = "data",
) -> tuple[list[Encoded], DataStats]:
    """Tokenised examples of every source (in order) and the counts.

    A source is a file path (``.json``, ``.jsonl``, ``.csv``, ``.parquet``, ``.arrow``, a ``save_to_disk``
    folder), ``bundled:NAME``, a name defined in ``dataset_dir/dataset_info.json`` (LLaMA-Factory's catalogue),
    or an in-memory dataset: a ``datasets.Dataset`` or a list of dicts.
    """
    from lorafam.data import dataset_info

    if not files:
        raise DatasetError("dataset: no dataset file given (set 'dataset' to a .json/.jsonl path)")
    stats = DataStats()
    mode = set_template(tokenizer, template, stats.notes)
    out: list[Encoded] = []
    for spec in files:
        if isinstance(spec, (str, Path)):
            path = resolve_path(str(spec))
            if not path.exists() and not str(spec).startswith(BUNDLED_PREFIX) and _looks_like_name(str(spec)):
                info = dataset_info.entry(str(spec), dataset_dir)
                normalised, rstats = dataset_info.examples(info, skip_bad_lines)
                stats.files.append(f"{info.path} ({info.name})")
                records = [(ex.source, ex) for ex in normalised]
            else:
                raw, rstats = read_records(path, skip_bad_lines=skip_bad_lines)
                stats.files.append(str(path))
                records = raw
        else:  # a datasets.Dataset or a list of dicts given to the Python API
            name = f"<{type(spec).__name__}>"
            raw, rstats = records_of(spec, name)
            stats.files.append(name)
            records = raw
        if rstats.bad_lines:
            stats.bad_lines[rstats.path] = rstats.bad_lines
        for where, rec in records:
            if max_samples is not None and stats.records >= max_samples:
                break
            ex = rec if isinstance(rec, Example) else normalise(rec, where)
            stats.records += 1
            stats.formats[ex.fmt] = stats.formats.get(ex.fmt, 0) + 1
            enc = encode(tokenizer, ex, cutoff_len, train_on_prompt=train_on_prompt, mode=mode)
            stats.truncated += enc.truncated
            if enc.n_target == 0:
                stats.dropped_no_target += 1
                continue
            out.append(enc)
    if not out:
        shown = ", ".join(stats.files)
        raise DatasetError(
            f"dataset: no usable example in {shown} after filtering "
            f"({stats.records} records read, {stats.dropped_no_target} had no target token within "
            f"cutoff_len={cutoff_len})"
        )
    return out, stats


def _looks_like_name(spec: str) -> bool:
    """A dataset_info.json name (``alpaca_en_demo``), not a path to a file that is missing."""
    return "/" not in spec and "\\" not in spec and Path(spec).suffix == ""


def split(examples: list[Encoded], val_size: float | int, seed: int) -> tuple[list[Encoded], list[Encoded]]:
    """Seeded train/validation split; ``val_size`` is a fraction (< 1) or a count."""
    if not val_size:
        return examples, []
    n_val = int(round(len(examples) * val_size)) if val_size < 1 else int(val_size)
    n_val = max(1, min(n_val, len(examples) - 1))
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val_idx], [examples[i] for i in sorted(val_idx)]


# -- packing -----------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One training row: one example, or several packed ones (``position_ids`` restart at each sample)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def to_rows(examples: list[Encoded]) -> list[Row]:
    return [Row(e.input_ids, e.labels, list(range(len(e.input_ids)))) for e in examples]


def check_packing(configs: dict[str, Any]) -> None:
    """Refuse ``packing: true`` for adapters that would silently mis-train on packed rows (issue: aLoRA and
    sequence-routed mixtures see one packed row as one sample).

    Raises:
        ValueError: names the adapter, its member and the reason.
    """
    for name, config in configs.items():
        why = config.packing_problem()
        if why:
            raise ValueError(
                f"packing: true cannot be used with adapter {name!r} ({type(config).method}): {why}. "
                "Set packing: false."
            )


def pack(examples: list[Encoded], cutoff_len: int) -> list[Row]:
    """Greedy first-fit packing into rows of at most ``cutoff_len`` tokens (example order kept within a row).

    Position ids restart at 0 for every sample; with no padding mask, transformers builds a block-diagonal
    causal mask from them, so packed samples never attend to each other (checked in the tests).
    """
    rows: list[Row] = []
    for e in examples:
        for row in rows:
            if len(row.input_ids) + len(e.input_ids) <= cutoff_len:
                break
        else:
            row = Row([], [], [])
            rows.append(row)
        row.input_ids += e.input_ids
        row.labels += e.labels
        row.position_ids += list(range(len(e.input_ids)))
    return rows


def collate(rows: list[Row], pad_id: int, packed: bool = False) -> dict[str, torch.Tensor]:
    """Right-padded tensors. Unpacked batches get an attention mask; packed ones get position ids only (the
    padding tail is its own "sample", so nothing attends to it and it is never trained)."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        pos[i, :n] = torch.tensor(r.position_ids)
        pos[i, n:] = torch.arange(width - n)
        mask[i, :n] = 1
    out = {"input_ids": ids, "labels": labels}
    if packed:
        out["position_ids"] = pos
    else:
        out["attention_mask"] = mask
    return out


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled row order of one epoch (a pure function of seed and epoch)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order
