"""The shared benchmark helpers measure what they claim (no timing assertions: only structure and memory)."""

from __future__ import annotations

import json
import sys

from benchmarks.common import interleaved, run_child, update_markdown_section, write_json


def test_run_child_reports_the_childs_own_peak_rss():
    small = run_child([sys.executable, "-c", "print('RESULT {\"ok\": 1}')"])
    # polled from /proc while the child runs (it holds 200 MiB for a while)
    big = run_child([sys.executable, "-c", "import time; x = bytearray(200 * 2**20); time.sleep(0.5)"])
    # reported by the child itself, as child_report does
    code = (
        "import json; x = bytearray(200 * 2**20); del x; "
        "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
        "print('RESULT ' + json.dumps({'vm_hwm_kib': hwm}))"
    )
    reported = run_child([sys.executable, "-c", code])
    assert small["returncode"] == 0 and small["result"] == {"ok": 1}
    assert big["result"] is None and big["peak_rss_source"] == "polled VmHWM"
    assert reported["peak_rss_source"] == "child VmHWM"
    # 200 MiB in the later children only: their peaks are at least ~190 MiB above the first's
    assert big["peak_rss_mib"] - small["peak_rss_mib"] > 190
    assert reported["peak_rss_mib"] - small["peak_rss_mib"] > 190


def test_run_child_reports_failure():
    r = run_child([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])
    assert r["returncode"] == 3 and "boom" in r["stderr_tail"]


def test_interleaved_alternates_order_and_counts():
    calls: list[str] = []
    stats = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, log=None)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up round, then A B, B A, ...
    assert stats["a"]["n"] == stats["b"]["n"] == 4
    assert stats["a"]["min_s"] <= stats["a"]["median_s"] <= stats["a"]["max_s"]


def test_interleaved_starts_no_round_expected_to_end_past_the_deadline():
    import time

    calls = []
    slow = {"a": lambda: (calls.append("a"), time.sleep(0.05)), "b": lambda: calls.append("b")}
    stats = interleaved(slow, repeats=10, warmup=0, log=None, deadline=time.perf_counter() + 0.12)
    assert 1 <= stats["a"]["n"] == stats["b"]["n"] < 10  # whole rounds only, and not all of them
    assert len(calls) == 2 * stats["a"]["n"]
    gone = interleaved(slow, repeats=3, log=None, deadline=time.perf_counter() + 1.0, first_round_s=5.0)
    assert gone == {}  # the first round's estimate alone is past the deadline: nothing timed


def test_markdown_sections_are_replaced_in_place(tmp_path):
    md = tmp_path / "B.md"
    update_markdown_section("one", "first body", md)
    update_markdown_section("two", "second body", md)
    update_markdown_section("one", "new first body", md)
    text = md.read_text()
    assert text.startswith("# Benchmarks")
    assert "first body" not in text.replace("new first body", "")
    assert text.index("new first body") < text.index("second body")
    assert text.count("<!-- BEGIN one -->") == 1


def test_write_json_is_complete_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "r" / "x.json"
    write_json(path, {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_paired_ratios_are_per_round_not_ratios_of_medians():
    from benchmarks.common import paired

    # round 2 is slow for both sides (load): per-round ratios stay 0.5 where medians would not say so
    r = paired([1.0, 10.0, 1.2], [2.0, 20.0, 2.4])
    assert r["rounds"] == [0.5, 0.5, 0.5] and r["median"] == r["min"] == r["max"] == 0.5
    import pytest

    with pytest.raises(ValueError, match="equally long"):
        paired([1.0], [1.0, 2.0])


def test_gemm_peak_reports_every_shape_and_dtype():
    import torch

    from benchmarks.common import gemm_peak

    g = gemm_peak({"a": (8, 16, 32), "b": (8, 32, 16)}, (torch.float32, torch.bfloat16), rounds=2)
    for dt in ("float32", "bfloat16"):
        assert set(g[dt]["per_shape_gflops"]) == {"a", "b"} and g[dt]["peak_gflops"] > 0
