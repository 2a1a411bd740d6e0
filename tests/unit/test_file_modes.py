"""Atomically written files and folders get the permissions a plain open()/mkdir() would give (not mkstemp's
0600 / mkdtemp's 0700): results, reports and adapters are meant to be shared."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import lorafam as lf
from lorafam.arena.results import atomic_write_json
from lorafam.core.checkpoint import atomic_write_text, current_umask


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_text_json_and_adapter_folders_follow_the_umask(tmp_path: Path) -> None:
    mask = current_umask()
    atomic_write_text(tmp_path / "a.md", "hello")
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    assert _mode(tmp_path / "a.md") == _mode(tmp_path / "b.json") == 0o666 & ~mask
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2, targets=["q_proj"]))
    lf.save_adapter(model, tmp_path / "adapter")
    assert _mode(tmp_path / "adapter") == 0o777 & ~mask
    assert (tmp_path / "b.json").read_text() == '{\n "x": 1\n}'
