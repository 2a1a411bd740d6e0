"""benchmarks.speed_report.by_host: which archived runs make the per-host table, and what a cell says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from benchmarks.common import RESULTS
from benchmarks.speed_report import by_host, summary


def test_latest_whole_runs_per_host_only(tmp_path: Path) -> None:
    zen4 = json.loads((RESULTS / "speed_session9_run2.json").read_text())
    for name in ("speed_session9_run2.json", "speed_session9_run3.json", "speed_session8_run3.json"):
        shutil.copy(RESULTS / name, tmp_path / name)
    shutil.copy(RESULTS / "speed_session4_run1.json", tmp_path / "speed_session4_run1.json")  # AVX2-only EPYC
    (tmp_path / "speed_session7_run1.json").write_text(json.dumps(zen4))  # same host, earlier session: left out
    partial = dict(zen4, parts_from_earlier_runs={"gen": {}})  # same session, not a whole run: left out
    (tmp_path / "speed_session9_run4.json").write_text(json.dumps(partial))
    table = by_host(tmp_path)
    header = next(line for line in table.splitlines() if line.startswith("| target"))
    assert (
        "AMD EPYC (AVX512-BF16, no AMX): session 9, `speed_session9_run2.json`, `speed_session9_run3.json` |"
        in header
    )
    assert "AMD EPYC (no bf16 instructions): session 4" in header and "(AMX): session 8" in header
    assert "session7" not in table and "run4" not in table
    rows = {r["target"]: r for r in summary(zen4)}
    dora = rows["unmerged DoRA decoding, × base tokens/s"]
    line = next(x for x in table.splitlines() if x.startswith("| unmerged DoRA decoding"))
    assert f"{dora['value']:.3f}, " in line and "(met 0/2)" in line  # run 2 and run 3 both missed


def test_no_archived_runs_no_table(tmp_path: Path) -> None:
    assert by_host(tmp_path) == ""
