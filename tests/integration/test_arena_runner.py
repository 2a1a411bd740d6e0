"""The arena end to end on a tiny random model: one worker process for the runs, result schema, a crash recorded
as a failed run, resume skips finished runs, a result from another lorafam version is kept apart and redone; then the
report builds from those files."""

from __future__ import annotations

import json
from pathlib import Path

from lorafam.arena import results as R
from lorafam.arena.runner import KEPT_APART, run_arena
from lorafam.arena.spec import Experiment, load_spec, plan

SPEC = """
defaults:
  model: tiny-llama
  threads: 1
  rank: 4
  alpha: 8
peers: {peft: false, full_ft: false, base: true}
budgets:
  quick: {tasks: [add3], seeds: [0], steps: 3, batch_size: 2, eval_items: 4, forget_prompts: 2, decode_tokens: 3}
"""


def test_arena_runs_resumes_records_failures_and_keeps_apart(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(SPEC)
    exps = plan(load_spec(spec_file), "quick", members=["lora"])
    assert [e.run_id for e in exps] == ["base--base--add3--s0", "lorafam--lora--add3--s0"]
    good = exps[1]
    bad = Experiment("lorafam", "lora", "add3", 7, "quick", {**good.settings, "config_overrides": {"rank": -1}})
    exps.append(bad)
    res = tmp_path / "res"

    out = run_arena(exps, res, show_progress=False, log=lambda _: None)
    assert sorted(out.ran) == sorted([exps[0].run_id, good.run_id]) and out.failed == [bad.run_id]
    folder = res / "quick"
    d = json.loads((folder / f"{good.run_id}.json").read_text())
    assert set(d) == {"run_info", "train_info", "meta_info"}
    ri, ti, mi = d["run_info"], d["train_info"], d["meta_info"]
    assert ri["status"] == "ok" and ri["peak_rss_mb"] > 50 and ri["threads"] == 1
    assert ti["trainable_params"] > 0 and len(ti["loss_curve"]) == 3 and ti["eval_curve"][-1][0] == 3
    assert ti["seconds_per_step"] > 0 and ti["tokens_per_second"] > 0 and ti["accuracy"] is not None
    assert ti["forgetting_kl"] is not None and ti["adapter_bytes"] > 0 and ti["merge_seconds"] is not None
    assert mi["packages"]["torch"] and mi["machine"]["cores"] >= 1
    failed = json.loads((folder / f"{bad.run_id}.json").read_text())["run_info"]
    assert failed["status"] == "failed" and "rank" in failed["error"]

    # resume: finished runs are skipped, the failed one is retried
    again = run_arena(exps, res, show_progress=False, log=lambda _: None)
    assert sorted(again.skipped) == sorted([exps[0].run_id, good.run_id]) and again.failed == [bad.run_id]

    # a result written by another lorafam version is moved aside and redone
    r = R.read_result(folder / f"{good.run_id}.json")
    r.meta_info.lorafam_version = "0.0.0-other"
    R.write_result(folder / f"{good.run_id}.json", r)
    third = run_arena(exps[:2], res, show_progress=False, log=lambda _: None)
    assert third.kept_apart == [good.run_id] and third.ran == [good.run_id]
    assert len(list((folder / KEPT_APART).glob("*.json"))) == 1

    from lorafam.report.build import build_report

    paths = build_report(res, tmp_path / "report", bench_dir=None)
    en = paths["en.md"].read_text()
    assert "| lora |" in en and bad.run_id in en and "0.0.0-other" in en


def test_a_run_that_kills_the_worker_is_failed_and_the_next_run_gets_a_new_worker(tmp_path: Path) -> None:
    """One worker process runs the arena; when a run takes it down (here: killed by ``--timeout`` while it starts),
    that run is recorded as failed with the reason, and the next run starts a new worker and succeeds."""
    from lorafam.arena.pool import Worker, run_one

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(SPEC)
    base, lora = plan(load_spec(spec_file), "quick", members=["lora"])
    folder = tmp_path / "res"
    folder.mkdir()
    worker = Worker(threads=1)
    try:
        assert run_one(lora, folder / "a.json", timeout_s=0.3, worker=worker) == "failed"
        died = json.loads((folder / "a.json").read_text())["run_info"]
        assert died["status"] == "failed" and "timed out" in died["error"]
        assert worker.proc is None  # the dead process is gone; the next job starts a new one
        assert run_one(base, folder / "b.json", worker=worker) == "ok"
        first = worker.proc
        assert run_one(lora, folder / "c.json", worker=worker) == "ok"
        assert worker.proc is first  # one process for the runs that follow
    finally:
        worker.close()
    ok = json.loads((folder / "c.json").read_text())["run_info"]
    assert ok["cpu_s"] > 0 and 50 < ok["peak_rss_mb"] < 4000 and ok["duration_s"] > 0


def test_a_budget_reuses_a_run_another_budget_did_with_the_same_settings(tmp_path: Path) -> None:
    """``standard`` reuses what ``quick`` ran when the settings hash, lorafam version and machine agree: the result
    is copied into the new budget's folder with ``reused_from``, and no new run is made."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        SPEC + "  standard: {tasks: [add3], seeds: [0], steps: 3, batch_size: 2, eval_items: 4, "
        "forget_prompts: 2, decode_tokens: 3}\n"
    )
    spec = load_spec(spec_file)
    quick = plan(spec, "quick", members=["lora"], peers=False)
    standard = plan(spec, "standard", members=["lora"], peers=False)
    assert [e.spec_hash for e in quick] == [e.spec_hash for e in standard]
    res = tmp_path / "res"
    first = run_arena(quick, res, show_progress=False, log=lambda _: None)
    assert first.ran == [quick[0].run_id]
    second = run_arena(standard, res, show_progress=False, log=lambda _: None)
    assert second.ran == [] and second.skipped == [standard[0].run_id]
    copied = R.read_result(res / "standard" / f"{standard[0].run_id}.json")
    original = R.read_result(res / "quick" / f"{quick[0].run_id}.json")
    assert copied.train_info.extra["reused_from"] == f"quick/{quick[0].run_id}.json"
    assert copied.run_info.budget == "standard" and copied.train_info.evals == original.train_info.evals


def test_a_user_task_gets_per_item_records_curves_and_intervals(tmp_path: Path) -> None:
    """A task declared in the spec (``tasks: {mine: {train_file, test_file, checker}}``) is run like a built-in
    one: per-item records at every curve point, keyed by item, and paired intervals in the report data."""
    from lorafam.report import data as D

    rows = [{"prompt": f"Say {w} twice.", "answer": f"{w} {w}"} for w in ("red", "blue", "green", "gold", "pink")]
    rows += [{"prompt": f"Say {w} twice.", "answer": f"{w} {w}"} for w in ("teal", "grey", "jade", "rose", "navy")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[6:]))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        SPEC.replace("tasks: [add3]", "tasks: [mine]").replace("eval_items: 4,", "eval_items: 4, eval_at: [2],")
        + f"tasks:\n  mine: {{train_file: {tmp_path / 'train.jsonl'}, test_file: {tmp_path / 'test.jsonl'}, "
        "checker: exact}\n"
    )
    exps = plan(load_spec(spec_file), "quick", members=["lora"])
    assert [e.task for e in exps] == ["mine", "mine"]
    res = tmp_path / "res"
    out = run_arena(exps, res, show_progress=False, log=lambda _: None)
    assert sorted(out.ran) == sorted(e.run_id for e in exps) and not out.failed
    lora = R.read_result(res / "quick" / f"{exps[1].run_id}.json").train_info
    assert [e["step"] for e in lora.evals] == [2, 3] and len(lora.item_keys) == 4
    assert all(len(e["em"]) == len(e["nll"]) == e["items"] for e in lora.evals)
    data = D.load(res)
    gap = D.paired(data.row("lorafam", "lora"), data.row("base", "base"), "mine", "nll")
    assert gap is not None and gap.n_items == 4 and gap.low <= gap.estimate <= gap.high
