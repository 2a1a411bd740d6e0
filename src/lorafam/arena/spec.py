"""The arena spec: which experiments (member × task × seed) run, with which settings.

The packaged ``default.yaml`` holds the defaults, the budgets (quick / standard / full), the peers and per-task /
per-member overrides; a user spec overlays it key by key. The result is validated against the pydantic models of
:mod:`lorafam.arena.schema` (unknown keys and bad values are named with their place and the valid choices).
Members come from the registry (``lorafam.MEMBERS``), so a member added later is in the arena with no change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lorafam.arena.results import RunInfo, spec_hash
from lorafam.arena.schema import BUDGET_ONLY, validate_spec
from lorafam.arena.tasks import builtin_tasks, make_task
from lorafam.helpers import check_keys, merge_dicts, read_yaml_mapping, unknown

DEFAULT_SPEC = Path(__file__).with_name("default.yaml")
IMPLS = ("lorafam", "peft", "full", "base")
FULL_FT = "full-ft"
BASE = "base"
__all__ = ["BUDGET_ONLY", "Experiment", "load_spec", "plan", "resolve_settings", "run_hash"]


@dataclass(frozen=True)
class Experiment:
    """One run: an implementation of a member on a task with a seed, and its resolved settings."""

    impl: str
    member: str
    task: str
    seed: int
    budget: str
    settings: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def run_id(self) -> str:
        return f"{self.impl}--{self.member}--{self.task}--s{self.seed}"

    @property
    def spec_hash(self) -> str:
        return run_hash(self.impl, self.member, self.task, self.settings)

    def run_info(self, **fields: Any) -> RunInfo:
        """A ``RunInfo`` naming this experiment, with the given status / timing fields."""
        return RunInfo(
            self.run_id, self.impl, self.member, self.task, self.seed, self.budget, self.spec_hash, **fields
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "impl": self.impl,
            "member": self.member,
            "task": self.task,
            "seed": self.seed,
            "budget": self.budget,
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Experiment:
        return cls(d["impl"], d["member"], d["task"], int(d["seed"]), d["budget"], dict(d["settings"]))


# Settings that change how fast a run goes, not what it computes: not part of a run's identity.
EXECUTION_ONLY = ("bf16_probe", "threads", "workers")


def run_hash(impl: str, member: str, task: str, settings: dict[str, Any]) -> str:
    """A run's identity: what it computes (the bf16 micro-benchmark's timings and the thread count are left out;
    only the bf16 *decision* counts), so a run done with 1 thread is the same run as with 2, and the number of runs
    going at once (``workers``) does not count either."""
    kept = {k: v for k, v in settings.items() if k not in EXECUTION_ONLY}
    return spec_hash({"impl": impl, "member": member, "task": task, **kept})


def load_spec(path: str | Path | None = None) -> dict[str, Any]:
    """The default spec, overlaid with ``path`` when given, validated (:mod:`lorafam.arena.schema`).

    Raises:
        ValueError: unreadable file, an unknown key or a bad value (named with its place in the file and the
            valid choices), a member or task override for a member or task that does not exist.
    """
    spec = yaml.safe_load(DEFAULT_SPEC.read_text(encoding="utf-8"))
    where = f"arena spec {DEFAULT_SPEC} (packaged)"
    if path is not None:
        p = Path(path)
        where = f"arena spec {p}"
        user = read_yaml_mapping(p, where)
        merged = merge_dicts(spec, user)
        for name, budget in (user.get("budgets") or {}).items():
            # a budget the user writes with tasks/seeds (no groups) replaces the default's groups
            if isinstance(budget, dict) and ("tasks" in budget or "seeds" in budget) and "groups" not in budget:
                merged["budgets"][name].pop("groups", None)
        spec = merged
    check_spec(spec, where)
    return spec


def check_spec(spec: dict[str, Any], where: str = "arena spec") -> None:
    """Validate a spec dict: its shape and values (pydantic), then the names of the members and tasks that
    ``member_overrides`` / ``task_overrides`` refer to."""
    validate_spec(spec, where)
    check_keys(spec.get("member_overrides") or {}, [*member_names(), FULL_FT, BASE], f"{where}: member_overrides",
               "member")  # fmt: skip
    tasks = valid_tasks(spec)
    check_keys(spec.get("task_overrides") or {}, tasks, f"{where}: task_overrides", "task")
    for name, budget in spec["budgets"].items():
        check_keys((budget or {}).get("task_overrides") or {}, tasks, f"{where}: budgets.{name}.task_overrides",
                   "task")  # fmt: skip


def member_names(spec: dict[str, Any] | None = None) -> list[str]:
    """Every family member in the registry, oldest first."""
    from lorafam.family import family

    return [m.name for m in family()]


def valid_tasks(spec: dict[str, Any]) -> list[str]:
    return list(builtin_tasks()) + list(spec.get("tasks") or {})


def plan(
    spec: dict[str, Any],
    budget: str = "quick",
    members: list[str] | None = None,
    tasks: list[str] | None = None,
    seeds: list[int] | None = None,
    peers: bool = True,
) -> list[Experiment]:
    """The experiments of one arena, in run order (base, then members oldest first, each followed by its peer).

    Raises:
        ValueError: unknown budget, member or task (each message lists the valid names).
    """
    from lorafam.family import MEMBERS

    check_spec(spec)
    if budget not in spec["budgets"]:
        raise unknown("budget", budget, spec["budgets"])
    b = spec["budgets"][budget]
    all_members = member_names(spec)
    extra = [FULL_FT, BASE]
    chosen = list(members) if members else all_members
    check_keys(chosen, all_members + extra, "--members", "member")
    if b.get("groups"):
        return _plan_groups(spec, budget, b["groups"], chosen if members else None, tasks, seeds, peers)
    task_names = list(tasks) if tasks else list(b.get("tasks") or ["add3"])
    for t in task_names:
        make_task(t, spec.get("tasks"))
    seed_list = list(seeds) if seeds is not None else list(b.get("seeds") or [0])
    p = spec.get("peers") or {}
    peft_ok = peers and p.get("peft", True) and _has_peft()
    peer_seeds = set(b.get("peer_seeds") or seed_list)  # PEFT / full fine-tuning peers: these seeds only
    peer_members = set(b["peer_members"]) if b.get("peer_members") else None  # PEFT peers: these members only
    peer_tasks = set(b["peer_tasks"]) if b.get("peer_tasks") else None  # PEFT / full-FT peers: these tasks only
    # seed-independent probes (speed, size, merge) on these seeds only; forgetting is measured on every run
    probe_seeds = set(b["probe_seeds"]) if b.get("probe_seeds") is not None else None

    out: list[Experiment] = []
    for task in task_names:
        for seed in seed_list:

            def add(impl: str, member: str, task: str = task, seed: int = seed) -> None:
                settings = resolve_settings(spec, budget, task, member)
                if probe_seeds is not None and seed not in probe_seeds and settings.get("probes", True) is True:
                    settings["probes"] = "forgetting"
                out.append(Experiment(impl, member, task, seed, budget, settings))

            peer_here = seed in peer_seeds and (peer_tasks is None or task in peer_tasks)

            if peers and p.get("base", True) and seed == seed_list[0]:
                add("base", BASE)  # the untrained model on the same test split (it depends on data_seed only)
            for m in chosen:
                if m in extra:
                    continue
                add("lorafam", m)
                if peft_ok and MEMBERS[m].in_peft and peer_here and (peer_members is None or m in peer_members):
                    add("peft", m)
                    why = _peer_unavailable(MEMBERS[m])
                    if why:
                        out[-1].settings["skip_reason"] = why
            if peers and p.get("full_ft", True) and (not members or FULL_FT in chosen) and peer_here:
                add("full", FULL_FT)
    return out


def _plan_groups(
    spec: dict[str, Any],
    budget: str,
    groups: list[dict[str, Any]],
    members: list[str] | None,
    tasks: list[str] | None,
    seeds: list[int] | None,
    peers: bool,
) -> list[Experiment]:
    """A budget written as groups of runs, each ``{tasks, seeds, members, peft}``: ``members`` (default: every
    family member, ``base`` and ``full-ft``) may name ``base`` and ``full-ft``; ``peft`` lists the members whose
    PEFT peer runs too (``true``: every member PEFT has). The base runs once per task (first seed it appears
    with). ``--members/--tasks/--seeds`` filter the result; a run named by two groups runs once."""
    from lorafam.family import MEMBERS

    for t in tasks or []:
        make_task(t, spec.get("tasks"))  # an unknown task on the command line is named, with the valid ones
    if tasks:  # --tasks also runs a task no group names, with the first group's members and seeds
        named = {t for g in groups if isinstance(g, dict) for t in g.get("tasks") or ["dates"]}
        extra = [t for t in tasks if t not in named]
        if extra and groups:
            groups = [*groups, {**groups[0], "tasks": extra}]
    out: list[Experiment] = []
    seen: set[str] = set()
    based: set[str] = set()
    probe_seeds = spec["budgets"][budget].get("probe_seeds")
    for i, g in enumerate(groups):  # their keys and types are checked by plan's check_spec
        g_members = list(g.get("members") or [*member_names(spec), BASE, FULL_FT])
        check_keys(g_members, [*member_names(spec), BASE, FULL_FT], f"budgets.{budget}.groups[{i}].members",
                   "member")  # fmt: skip
        skip = list(g.get("skip") or [])
        check_keys(skip, g_members, f"budgets.{budget}.groups[{i}].skip", "member")
        g_members = [m for m in g_members if m not in skip]
        peft = g.get("peft") or []
        peft_set = {m for m in g_members if m in MEMBERS and MEMBERS[m].in_peft} if peft is True else set(peft)
        for task in g.get("tasks") or ["dates"]:
            make_task(task, spec.get("tasks"))
            if tasks and task not in tasks:
                continue
            for seed in g.get("seeds") or [0]:
                if seeds is not None and seed not in seeds:
                    continue

                def add(impl: str, member: str, task: str = task, seed: int = seed) -> None:
                    exp_settings = resolve_settings(spec, budget, task, member)
                    if (
                        probe_seeds is not None
                        and seed not in probe_seeds
                        and exp_settings.get("probes", True) is True
                    ):
                        exp_settings["probes"] = "forgetting"
                    e = Experiment(impl, member, task, seed, budget, exp_settings)
                    if e.run_id not in seen:
                        seen.add(e.run_id)
                        out.append(e)

                if peers and BASE in g_members and task not in based and (not members or BASE in members):
                    based.add(task)
                    add("base", BASE)
                for m in member_names(spec):
                    if m not in g_members or (members and m not in members):
                        continue
                    add("lorafam", m)
                    if peers and m in peft_set and _has_peft() and (spec.get("peers") or {}).get("peft", True):
                        add("peft", m)
                        why = _peer_unavailable(MEMBERS[m])
                        if why:
                            out[-1].settings["skip_reason"] = why
                if peers and FULL_FT in g_members and (not members or FULL_FT in members):
                    add("full", FULL_FT)
    if not out:
        raise ValueError(f"budget {budget!r}: the filters leave nothing to run")
    return out


def resolve_settings(spec: dict[str, Any], budget: str, task: str, member: str) -> dict[str, Any]:
    """defaults ← budget ← task override ← the budget's task override ← member override (plan-only keys removed)."""
    s = dict(spec["defaults"])
    s.update({k: v for k, v in spec["budgets"][budget].items() if k not in BUDGET_ONLY})
    s.update((spec.get("task_overrides") or {}).get(task) or {})
    s.update((spec["budgets"][budget].get("task_overrides") or {}).get(task) or {})  # e.g. fewer kv steps
    s.update(_member_train_settings(member))
    s.update((spec.get("member_overrides") or {}).get(member) or {})
    if task in (spec.get("tasks") or {}):
        s["user_task"] = dict(spec["tasks"][task])
    return s


def _member_train_settings(member: str) -> dict[str, Any]:
    """Training settings a member's registry entry recommends (e.g. its learning rate)."""
    from lorafam.family import MEMBERS

    opts = MEMBERS[member].train_options if member in MEMBERS else {}
    return {k: opts[k] for k in ("lr", "warmup_steps") if k in opts}


def _peer_unavailable(member: Any) -> str:
    """Why PEFT cannot run this member here ('' when it can): its 4-bit base needs bitsandbytes."""
    import importlib.util

    if member.preset.get("quantize") and importlib.util.find_spec("bitsandbytes") is None:
        return "PEFT's 4-bit base needs bitsandbytes, which is not installed here"
    return ""


def _has_peft() -> bool:
    import importlib.util

    return importlib.util.find_spec("peft") is not None
