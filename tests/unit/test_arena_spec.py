"""The arena spec validated by pydantic models (arena/schema.py): every key and value of a user spec is checked,
errors name the key with its place in the file and the valid choices; user tasks keep working."""

from __future__ import annotations

import json

import pytest
import yaml

from lorafam.arena.schema import BUDGET_ONLY, Settings, validate_spec
from lorafam.arena.spec import DEFAULT_SPEC, load_spec, plan, resolve_settings


def _spec(tmp_path, text: str):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_the_packaged_spec_is_valid_and_every_default_is_a_typed_setting():
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    model = validate_spec(raw, "default")
    assert set(raw["defaults"]) <= set(Settings.model_fields)
    assert model.budgets["standard"].groups[2].members == ["base", "lora", "longlora"]
    assert set(BUDGET_ONLY) == {"tasks", "seeds", "groups", "peer_seeds", "peer_members", "peer_tasks",
                                "probe_seeds", "task_overrides"}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "budgets:\n  standard:\n    groups:\n      - {tasks: [dates]}\n      - {member: [lora]}\n",
            r"s.yaml: budgets.standard.groups\[1\]: unknown key 'member'. Did you mean 'members'\? "
            r"Valid: tasks, seeds, members, skip, peft",
        ),
        ("peers: {pfet: false}\n", r"peers: unknown key 'pfet'. Did you mean 'peft'\? Valid: peft, full_ft, base"),
        ("defaults: {bf16: maybe}\n", r"defaults.bf16 = 'maybe': Input should be a valid boolean.*; or .*'auto'"),
        ("defaults: {steps: 0}\n", r"defaults.steps = 0: Input should be greater than or equal to 1"),
        ("budgets: {quick: {seeds: one}}\n", r"budgets.quick.seeds = 'one': Input should be a valid list"),
        (
            "member_overrides: {lroa: {lr: 1.0e-3}}\n",
            r"member_overrides: unknown member 'lroa'. Did you mean 'lora'\?.*Valid: .*full-ft, base",
        ),
        ("task_overrides: {dats: {steps: 3}}\n", r"task_overrides: unknown task 'dats'. Did you mean 'dates'\?"),
        (
            "member_overrides: {lora: {rnak: 4}}\n",
            r"member_overrides.lora: unknown setting 'rnak'. Did you mean 'rank'\?",
        ),
        ("tasks: {mine: {train_file: a.jsonl}}\n", r"tasks.mine.test_file is required"),
        (
            "tasks: {mine: {train_file: a.jsonl, test_file: b.jsonl, checkr: exact}}\n",
            r"tasks.mine: unknown key 'checkr'. Did you mean 'checker'\?",
        ),
        ("- a\n- b\n", r"expected a mapping at the top level, got list"),
    ],
)
def test_errors_name_the_key_its_place_and_the_choices(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_spec(_spec(tmp_path, text))


def test_a_hand_built_spec_is_checked_by_plan_too():
    spec = load_spec()
    spec["budgets"]["quick"]["groups"][0]["seed"] = [1]
    with pytest.raises(ValueError, match=r"budgets.quick.groups\[0\]: unknown key 'seed'. Did you mean 'seeds'"):
        plan(spec, "quick")


def test_user_tasks_and_budgets_keep_working(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(6)]
    for name in ("train", "test"):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    text = (
        f"tasks:\n  mine: {{train_file: {tmp_path / 'train.jsonl'}, test_file: {tmp_path / 'test.jsonl'}, "
        "checker: exact, max_new_tokens: 8}\n"
        "task_overrides: {mine: {batch_size: 2}}\n"
        "budgets:\n  tiny: {tasks: [mine], seeds: [3], steps: 2}\n"
    )
    spec = load_spec(_spec(tmp_path, text))
    exps = plan(spec, "tiny", members=["lora"])
    assert ("lorafam", "lora", "mine", 3) in [(e.impl, e.member, e.task, e.seed) for e in exps]
    s = resolve_settings(spec, "tiny", "mine", "lora")
    assert s["steps"] == 2 and s["batch_size"] == 2 and s["user_task"]["max_new_tokens"] == 8
    assert spec["defaults"]["rank"] == yaml.safe_load(DEFAULT_SPEC.read_text())["defaults"]["rank"]  # overlaid
