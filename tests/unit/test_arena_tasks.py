"""Arena tasks, spec and results schema: generation, disjoint splits, checkers, plans, bad input."""

from __future__ import annotations

import json

import pytest

from lorafam.arena import results as R
from lorafam.arena.checkers import check_json, check_number
from lorafam.arena.spec import load_spec, plan, resolve_settings
from lorafam.arena.tasks import builtin_tasks, make_task


@pytest.mark.parametrize("name", ["add3", "json", "kv"])
def test_splits_are_disjoint_deterministic_and_seeded(name: str) -> None:
    task = make_task(name)
    train0, test0 = task.split(300, 50, seed=0)
    train1, test1 = task.split(300, 50, seed=1)
    assert len(train0) == 300 and len(test0) == 50
    assert {e.key for e in train0}.isdisjoint({e.key for e in test0})
    assert {e.key for e in train1}.isdisjoint({e.key for e in test1})
    assert [e.prompt for e in test0] == [e.prompt for e in test1]  # test split: data seed only
    assert [e.prompt for e in train0] != [e.prompt for e in train1]  # train split: run seed
    again, _ = task.split(300, 50, seed=0)
    assert [e.prompt for e in again] == [e.prompt for e in train0]
    assert all(task.check(e.answer, e.answer) for e in test0)  # gold passes its own checker


def test_items_are_correct() -> None:
    train, _ = make_task("add3").split(20, 5, seed=0)
    for ex in train:
        a, b = (int(x) for x in ex.prompt.split("What is ")[1].split("?")[0].split(" + "))
        assert ex.answer == str(a + b)
    for ex in make_task("json").split(20, 5, seed=0)[0]:
        gold = json.loads(ex.answer)
        assert gold["name"] in ex.prompt and gold["city"] in ex.prompt and str(gold["age"]) in ex.prompt
    for ex in make_task("kv").split(20, 5, seed=0)[0]:
        key = ex.prompt.rsplit("value of key ", 1)[1].split("?")[0]
        lines = dict(line.split(": ") for line in ex.prompt.splitlines()[:-1])
        assert lines[key] == ex.answer and len(lines) == 30


def test_kv_context_spans_several_s2attn_groups() -> None:
    # S²-Attn groups are 1/4 of the training sequence: a 30-line context puts the answer and question apart
    _, test = make_task("kv").split(1, 20, seed=0)
    far = 0
    for ex in test:
        lines = ex.prompt.splitlines()
        key = lines[-1].split("value of key ")[1].split("?")[0]
        idx = next(i for i, line in enumerate(lines) if line.startswith(key + ":"))
        far += (len(lines) - 1 - idx) > len(lines) / 4
    assert far >= len(test) // 2


def test_checkers() -> None:
    assert check_number(" 1,234 ", "1234") and not check_number("1234 apples", "1234")
    assert check_json('Sure: {"a": 1, "b": "x"}', '{"b": "x", "a": 1}')
    assert not check_json('{"a": 2}', '{"a": 1}') and not check_json("no json", '{"a": 1}')


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(
        ValueError,
        match="unknown task 'add4'.*Did you mean 'add3'.*Valid tasks: dates, recall, mix, add3, json, kv",
    ):
        make_task("add4")


def test_user_task_from_files(tmp_path) -> None:
    rows = [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:3]))
    spec = {"mine": {"train_file": str(tmp_path / "train.jsonl"), "test_file": str(tmp_path / "test.jsonl")}}
    train, test = make_task("mine", spec).split(100, 3, seed=0)
    assert len(test) == 3 and len(train) == 7  # test items removed from the training pool
    with pytest.raises(ValueError, match="unknown key"):
        make_task("bad", {"bad": {"train_fil": "x"}})
    (tmp_path / "broken.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="broken.jsonl:1"):
        make_task(
            "b", {"b": {"train_file": str(tmp_path / "broken.jsonl"), "test_file": str(tmp_path / "broken.jsonl")}}
        ).split(1, 1, 0)


def test_plan_uses_the_registry_and_validates_names(monkeypatch) -> None:
    import importlib

    fam = importlib.import_module("lorafam.family")  # the module (``lorafam.family`` is also a function)

    spec = load_spec()
    exps = plan(spec, "quick")
    members = {e.member for e in exps if e.impl == "lorafam"}
    assert members == set(fam.MEMBERS) - {"rslora"}  # quick skips rsLoRA (standard runs it)
    assert "rslora" in {e.member for e in plan(spec, "standard")}
    assert {"base", "full"} <= {e.impl for e in exps}
    assert all(e.task == "dates" and e.seed == 0 for e in exps)
    # a member added to the registry later appears with no change in the arena
    new = fam.FamilyMember(
        name="newbie",
        method="lora",
        title="t",
        authors="a",
        origin="o",
        year=2030,
        venue="v",
        arxiv="0000.00000",
        idea="i",
        parent="lora",
    )
    monkeypatch.setitem(fam.MEMBERS, "newbie", new)
    assert "newbie" in {e.member for e in plan(spec, "quick")}
    with pytest.raises(ValueError, match="--members: unknown member 'lroa'. Did you mean 'lora'.*Valid: lora"):
        plan(spec, "quick", members=["lroa"])
    bad = {
        **spec,
        "budgets": {**spec["budgets"], "quick": {**spec["budgets"]["quick"], "groups": [{"skip": ["dorra"]}]}},
    }
    with pytest.raises(ValueError, match="budgets.quick.groups\\[0\\].skip: unknown member 'dorra'"):
        plan(bad, "quick")
    with pytest.raises(ValueError, match="unknown budget 'fast'.*Valid: quick, standard, full"):
        plan(spec, "fast")
    with pytest.raises(ValueError, match="Valid tasks"):
        plan(spec, "quick", tasks=["nope"])


def test_settings_resolution_order() -> None:
    spec = load_spec()
    s = resolve_settings(spec, "standard", "kv", "full-ft")
    assert s["batch_size"] == spec["task_overrides"]["kv"]["batch_size"]
    assert s["lr"] == spec["member_overrides"]["full-ft"]["lr"]
    s = resolve_settings(spec, "standard", "mix", "mopeft")
    assert s["eval_items"] == spec["budgets"]["standard"]["task_overrides"]["mix"]["eval_items"]  # per task
    assert s["config_overrides"] == {"experts": ["lora", "dora"]}  # member override
    assert "task_overrides" not in s and "groups" not in s  # plan keys are not run settings


def test_standard_plan_groups_peers_and_probes() -> None:
    exps = plan(load_spec(), "standard")
    ids = [e.run_id for e in exps]
    assert len(ids) == len(set(ids))  # a run named by two groups runs once
    assert {e.run_id for e in exps if e.impl in ("peft", "full")} == {"full--full-ft--dates--s0"}
    assert [(e.task, e.seed) for e in exps if e.impl == "base"] == [("dates", 0), ("recall", 0), ("mix", 0)]
    seeds = {(e.member, e.seed) for e in exps if e.task == "dates" and e.impl == "lorafam"}
    assert {(m, s) for m in ("lora", "adalora") for s in (0, 1, 2)} <= seeds
    assert {e.member for e in exps if e.task == "recall"} == {"base", "lora", "longlora"}
    # seed-independent probes on seed 0 only; forgetting everywhere
    assert {e.settings["probes"] for e in exps if e.seed == 1} == {"forgetting"}
    assert all(e.settings["probes"] is True for e in exps if e.seed == 0)
    # the command line filters a grouped plan
    only = plan(load_spec(), "standard", members=["lora"], tasks=["dates"])
    assert {e.run_id for e in only} == {f"lorafam--lora--dates--s{s}" for s in (0, 1, 2)}


def test_bad_spec_file(tmp_path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("defaults:\n  stepz: 3\n")
    with pytest.raises(ValueError, match=r"s.yaml: defaults: unknown setting 'stepz'. Did you mean 'steps'\?"):
        load_spec(p)
    p.write_text("budgets:\n  standard: {peer_task: [add3]}\n")
    with pytest.raises(ValueError, match="budgets.standard: unknown key 'peer_task'. Did you mean 'peer_tasks'"):
        load_spec(p)
    p.write_text("budgets:\n  quick: {task_overrides: {kv: {stepz: 2}}}\n")
    with pytest.raises(ValueError, match="budgets.quick.task_overrides.kv: unknown setting 'stepz'.*Valid: model"):
        load_spec(p)
    p.write_text("budgets:\n  mine: {tasks: [add3], steps: 2, task_overrides: {add3: {batch_size: 2}}}\n")
    assert load_spec(p)["budgets"]["mine"]["steps"] == 2  # a new budget with valid keys is fine
    p.write_text("budgetz: {}\n")
    with pytest.raises(ValueError, match="unknown key 'budgetz'"):
        load_spec(p)


def test_result_roundtrip_and_atomic_write(tmp_path) -> None:
    r = R.RunResult(
        R.RunInfo("x", "lorafam", "lora", "add3", 0, "quick", "h", status="ok"),
        R.TrainInfo(accuracy=0.5, loss_curve=[[1, 2.0]]),
        R.collect_meta(),
    )
    R.write_result(tmp_path / "x.json", r)
    back = R.read_result(tmp_path / "x.json")
    assert back.to_dict() == r.to_dict()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    (tmp_path / "bad.json").write_text("{")
    found, problems = R.load_results(tmp_path)
    assert [p.name for p, _ in found] == ["x.json"] and "bad.json" in problems[0]
    assert r.meta_info.env_key.startswith(r.meta_info.lorafam_version)


def test_builtin_tasks_have_skills() -> None:
    skills = {t.skill for t in builtin_tasks().values()}
    assert {"arithmetic", "extraction", "retrieval"} <= skills
