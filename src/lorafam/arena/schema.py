"""The arena spec's shape as pydantic models, as the training config has one (:mod:`lorafam.train.config`).

A spec is ``defaults`` (the run settings), ``peers``, ``member_overrides`` / ``task_overrides`` (settings per member
/ task), ``budgets`` (settings plus what shapes the plan: tasks, seeds, groups...) and user ``tasks``. Every model
forbids unknown keys; :func:`validate_spec` turns pydantic's errors into one message that names the offending key
with its place in the file (``budgets.standard.groups[1].member``) and the valid choices.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lorafam.helpers import unknown

__all__ = ["ArenaSpecModel", "Budget", "Group", "Peers", "Settings", "UserTask", "validate_spec"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Settings(_Strict):
    """Run settings: ``defaults``, and any subset of them in a budget or an override."""

    model: str | None = None
    rank: int | None = Field(None, ge=1)
    alpha: float | None = Field(None, gt=0)
    dropout: float | None = Field(None, ge=0, lt=1)
    targets: str | list[str] | None = None
    lr: float | None = Field(None, gt=0)
    warmup_steps: int | None = Field(None, ge=0)
    clip: float | None = Field(None, ge=0)
    bf16: bool | Literal["auto"] | None = None
    threads: int | None = Field(None, ge=1)
    workers: int | Literal["auto"] | None = Field(None)  # runs at once (arena/runner.worker_count)
    data_seed: int | None = None
    system_prompt: str | None = None
    batch_size: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    eval_items: int | None = Field(None, ge=1)
    eval_every: int | None = Field(None, ge=0)
    eval_at: list[int] | None = None
    curve_items: int | None = Field(None, ge=0)
    eval_batch: int | None = Field(None, ge=1)
    gen_items: int | None = Field(None, ge=0)
    samples: int | None = Field(None, ge=0)
    forget_prompts: int | None = Field(None, ge=0)
    decode_tokens: int | None = Field(None, ge=0)
    probes: bool | Literal["forgetting"] | None = None
    config_overrides: dict[str, Any] | None = None  # member config fields (e.g. MoPEFT's experts)


class Group(_Strict):
    """One group of runs in a budget: these tasks × seeds × members; ``peft``: the members whose PEFT peer runs
    too (``true``: every member PEFT has)."""

    tasks: list[str] | None = None
    seeds: list[int] | None = None
    members: list[str] | None = None
    skip: list[str] | None = (
        None  # members left out of ``members`` (default: every member), e.g. one run elsewhere
    )
    peft: bool | list[str] | None = None


class Budget(Settings):
    """Settings for every run of the budget, plus what decides which runs there are."""

    tasks: list[str] | None = None
    seeds: list[int] | None = None
    groups: list[Group] | None = None
    peer_seeds: list[int] | None = None
    peer_members: list[str] | None = None
    peer_tasks: list[str] | None = None
    probe_seeds: list[int] | None = None
    task_overrides: dict[str, Settings] | None = None


class Peers(_Strict):
    """Which peers run beside the members, in the same harness."""

    peft: bool = True
    full_ft: bool = True
    base: bool = True


class UserTask(_Strict):
    """A task of the user's own: two JSONL files of ``{"prompt", "answer"}`` lines and a checker."""

    train_file: str
    test_file: str
    checker: str = "exact"  # exact | json | number | "module:function"
    max_new_tokens: int = Field(32, ge=1)
    skill: str | None = None
    description: str | None = None


class ArenaSpecModel(_Strict):
    """A whole arena spec (the packaged ``default.yaml`` overlaid with a user's file)."""

    defaults: Settings
    peers: Peers = Field(default_factory=Peers)
    member_overrides: dict[str, Settings] | None = None
    task_overrides: dict[str, Settings] | None = None
    budgets: dict[str, Budget]
    tasks: dict[str, UserTask] | None = None


BUDGET_ONLY = tuple(k for k in Budget.model_fields if k not in Settings.model_fields)
"""Budget keys that shape the plan (or apply per task) rather than being run settings themselves."""


def validate_spec(spec: Any, where: str) -> ArenaSpecModel:
    """The spec as models, or a ``ValueError`` naming the first offending key (its path in the file and the valid
    choices) or value; ``where`` says which spec (e.g. ``"arena spec my.yaml"``)."""
    try:
        return ArenaSpecModel.model_validate(spec)
    except ValidationError as exc:
        raise _explain(exc.errors(), where) from None


def _explain(errors: list[Any], where: str) -> ValueError:
    loc = _key_path(tuple(errors[0]["loc"]))
    err = errors[0]
    if err["type"] == "extra_forbidden":
        place = f"{where}: {_dotted(loc[:-1])}" if loc[:-1] else where
        model = _model_at(loc[:-1])
        return unknown("setting" if model is Settings else "key", str(loc[-1]), model.model_fields, place)
    if err["type"] == "missing":
        return ValueError(f"{where}: {_dotted(loc)} is required")
    # a union (bool | "auto") reports one error per alternative: say them all
    msgs = list(dict.fromkeys(e["msg"] for e in errors if _key_path(tuple(e["loc"])) == loc))
    return ValueError(f"{where}: {_dotted(loc)} = {err.get('input')!r}: {'; or '.join(msgs)}")


def _key_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without the union-member tags pydantic inserts (``defaults.bf16.bool``): keys and indices only."""
    model: Any = ArenaSpecModel
    out: list[Any] = []
    for part in loc:
        if _is_model(model):
            if part not in model.model_fields:
                out.append(part)  # the offending extra key
                break
            model = _optional_inner(model.model_fields[part].annotation)
        elif get_origin(model) in (dict, list):
            model = _optional_inner(get_args(model)[-1])
        else:
            break  # a union tag or a scalar's own detail
        out.append(part)
    return tuple(out)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The model class whose fields apply at ``loc`` (field names, dict keys and list indices)."""
    model: Any = ArenaSpecModel
    for part in loc:
        if _is_model(model) and part in model.model_fields:
            model = _optional_inner(model.model_fields[part].annotation)
        elif get_origin(model) in (dict, list):
            model = _optional_inner(get_args(model)[-1])
    return model if _is_model(model) else ArenaSpecModel


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _optional_inner(tp: Any) -> Any:
    """``X`` for ``X | None`` (a single alternative besides None); anything else unchanged."""
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if get_origin(tp) not in (None, dict, list) and len(args) == 1 else tp


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
