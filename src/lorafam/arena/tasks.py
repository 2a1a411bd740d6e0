"""The arena's tasks: generated from a seed, disjoint train/test splits, exact-match checkers.

Three built-in skills, chosen so that the base model scores about zero and a small budget separates methods
(measurements behind the choice: ``shared/ARENA-NOTES.md``):

- ``add3``  (arithmetic): "What is 417 + 289? Reply with only the number." → ``706``.
- ``json``  (structured extraction): a sentence about a person → a compact JSON object with four fixed fields.
- ``kv``    (long-context retrieval): many ``key: value`` lines, then "what is the value of key X?" → the value.
  The context (≈ 30 lines, 250+ tokens) is several times longer than S²-Attn's training group (¼ of the
  sequence), so the answer line and the question usually fall in different groups.

The test split depends only on the task's data seed (the same questions for every run); the training split
depends on the run seed and never contains a test item (checked by key). A user task is a JSONL file pair
(``{"prompt": ..., "answer": ...}`` per line) plus a checker name, declared in the arena spec.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafam.arena.checkers import Example, resolve_checker
from lorafam.helpers import closest


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Task:
    """A task: how to generate items, how to check them, how long answers are."""

    name: str
    skill: str  # "arithmetic" | "extraction" | "retrieval" | free text for user tasks
    checker: str
    max_new_tokens: int
    make_item: Callable[[random.Random], Example] | None = None
    train_file: str | None = None
    test_file: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, pred: str, gold: str) -> bool:
        return resolve_checker(self.checker)(pred, gold)

    def split(self, n_train: int, n_test: int, seed: int, data_seed: int = 1234) -> tuple[list[Example], ...]:
        """(train, test): the test items depend on ``data_seed`` only, the training items on ``seed``; no
        training item shares a key with a test item."""
        if self.make_item is None:
            return self._split_files(n_train, n_test, seed)
        test = _unique(self.make_item, random.Random(data_seed), n_test, set())
        held = {ex.key for ex in test}
        train = _unique(self.make_item, random.Random(1_000_003 * (seed + 1) + data_seed), n_train, held)
        return train, test

    def _split_files(self, n_train: int, n_test: int, seed: int) -> tuple[list[Example], ...]:
        train_all = read_jsonl(self.train_file, self.name)
        test = read_jsonl(self.test_file, self.name)[:n_test]
        held = {ex.key for ex in test}
        pool = [ex for ex in train_all if ex.key not in held]
        random.Random(seed).shuffle(pool)
        return pool[:n_train], test


def _unique(make: Callable[[random.Random], Example], rng: random.Random, n: int, banned: set[str]) -> list:
    out: list[Example] = []
    seen = set(banned)
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"could not generate {n} distinct items (the item space is too small)")
        ex = make(rng)
        if ex.key in seen:
            continue
        seen.add(ex.key)
        out.append(ex)
    return out


def read_jsonl(path: str | None, task: str) -> list[Example]:
    """Read ``{"prompt", "answer"}`` lines; errors name the file and line."""
    if not path:
        raise ValueError(f"task {task!r}: a user task needs both 'train_file' and 'test_file'")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"task {task!r}: no such file {str(p)!r}")
    out: list[Example] = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(Example(str(row["prompt"]), str(row["answer"]), str(row.get("key", row["prompt"]))))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{p}:{i}: expected a JSON object with 'prompt' and 'answer' ({exc})") from exc
    if not out:
        raise ValueError(f"task {task!r}: {p} holds no items")
    return out


# ---------------------------------------------------------------------------------------------------------------
# built-in generators
def _add3(rng: random.Random) -> Example:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return Example(f"What is {a} + {b}? Reply with only the number.", str(a + b), f"{a}+{b}")


_FIRST = [
    "Maria",
    "Ahmed",
    "Chen",
    "Olga",
    "Pierre",
    "Yuki",
    "Amara",
    "Lars",
    "Ines",
    "Tomas",
    "Leila",
    "Omar",
    "Sofia",
    "Ivan",
    "Nadia",
    "Kofi",
    "Elena",
    "Raj",
]
_LAST = [
    "Lopez",
    "Novak",
    "Tanaka",
    "Berg",
    "Okafor",
    "Rossi",
    "Dubois",
    "Kim",
    "Silva",
    "Haddad",
    "Weber",
    "Costa",
    "Moreau",
    "Ali",
    "Jensen",
    "Petrov",
]
_JOBS = [
    "nurse",
    "pilot",
    "baker",
    "teacher",
    "plumber",
    "chemist",
    "lawyer",
    "farmer",
    "dentist",
    "architect",
    "librarian",
    "welder",
]
_CITIES = [
    "Lyon",
    "Osaka",
    "Porto",
    "Quito",
    "Oslo",
    "Accra",
    "Hanoi",
    "Perth",
    "Graz",
    "Cusco",
    "Tunis",
    "Split",
    "Leeds",
    "Dakar",
]
_TEMPLATES = [
    "{name} is a {age}-year-old {job} who lives in {city}.",
    "At {age}, {name} works as a {job} in {city}.",
    "{name}, {age}, has a job as a {job} and a flat in {city}.",
    "Living in {city}, the {job} {name} turned {age} this year.",
]


def _json(rng: random.Random) -> Example:
    name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    age, job, city = rng.randint(19, 79), rng.choice(_JOBS), rng.choice(_CITIES)
    sentence = rng.choice(_TEMPLATES).format(name=name, age=age, job=job, city=city)
    prompt = (
        f'Extract the person as JSON with keys "name", "age", "job", "city". Reply with only the JSON.\n{sentence}'
    )
    gold = json.dumps({"name": name, "age": age, "job": job, "city": city}, separators=(", ", ": "))
    return Example(prompt, gold, f"{name}|{age}|{job}|{city}")


_SYL = ["ka", "ri", "mo", "tu", "le", "na", "po", "si", "ve", "do", "gu", "ba", "fe", "xi", "zo"]


def _kv(rng: random.Random, lines: int = 30) -> Example:
    keys: list[str] = []
    while len(keys) < lines:
        k = "".join(rng.choice(_SYL) for _ in range(3))
        if k not in keys:
            keys.append(k)
    values = [str(rng.randint(1000, 9999)) for _ in keys]
    asked = rng.randrange(lines)
    body = "\n".join(f"{k}: {v}" for k, v in zip(keys, values))
    prompt = f"{body}\nWhat is the value of key {keys[asked]}? Reply with only the value."
    return Example(prompt, values[asked], f"{keys[asked]}={values[asked]}@{asked}|{zlib.crc32(body.encode()):08x}")


_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
_DATE_STYLES = ["{d} {m} {y}", "{m} {d}, {y}", "the {d}th of {m} {y}", "{m} {d} {y}"]


def _dates(rng: random.Random) -> Example:
    y, mi = rng.randint(1950, 2049), rng.randrange(12)
    d = rng.randint(1, _DAYS[mi])
    text = rng.choice(_DATE_STYLES).format(d=d, m=_MONTHS[mi], y=y)
    prompt = f"Convert {text} to YYYY-MM-DD."
    gold = f"{y:04d}-{mi + 1:02d}-{d:02d}"
    return Example(prompt, gold, gold)


_WORDS = [
    "falcon", "copper", "meadow", "lantern", "harbor", "velvet", "pepper", "glacier", "canyon", "orchid",
    "marble", "thunder", "willow", "saddle", "comet", "pebble", "violin", "tunnel", "anchor", "blossom",
    "cactus", "dolphin", "ember", "forest", "garnet", "hammer", "island", "jacket", "kettle", "lemon",
    "mirror", "nectar", "oyster", "parrot", "quartz", "ribbon", "silver", "tiger", "umbrella", "walnut",
]  # fmt: skip
_FILLER = [
    "The {w} was left on the kitchen table.",
    "Someone painted a {w} on the garden wall.",
    "A child asked about the {w} twice.",
    "The shop sold a small {w} last week.",
    "Nobody remembered where the {w} came from.",
    "The old map showed a {w} near the river.",
    "A neighbour borrowed the {w} in spring.",
    "The museum keeps a {w} in the second room.",
]


def _recall(rng: random.Random, lines: int = 6) -> Example:
    """Long-range recall: a code word on the first line, ``lines`` filler sentences that name other words, then the
    question. The code word sits at the start, the question at the end: with S²-Attn's groups of ¼ of the
    sequence, the answer tokens cannot see the code word during LongLoRA's training."""
    words = rng.sample(_WORDS, lines + 1)
    code, others = words[0], words[1:]
    body = " ".join(rng.choice(_FILLER).format(w=w) for w in others)
    prompt = (
        f"The code word is {code}.\n{body}\nWhat is the code word given on the first line? "
        "Reply with only the word."
    )
    return Example(prompt, code, f"{code}|{'-'.join(others)}")


def _mix(rng: random.Random) -> Example:
    """Half dates, half json (strict strings): the mixture-routing task. The key says which part an item is from
    (``dates:…`` / ``json:…``), so the report can split the router's gates per part."""
    part, make = ("dates", _dates) if rng.random() < 0.5 else ("json", _json)
    ex = make(rng)
    return Example(ex.prompt, ex.answer, f"{part}:{ex.key}")


def mix_part(key: str) -> str | None:
    """The part ("dates" / "json") of a ``mix`` item key, else None."""
    head, sep, _ = key.partition(":")
    return head if sep and head in ("dates", "json") else None


def builtin_tasks() -> dict[str, Task]:
    """The built-in tasks by name."""
    return {
        "dates": Task(
            "dates",
            "format conversion",
            "exact",
            14,
            _dates,
            description="a date in words → YYYY-MM-DD (strict string: teacher-forced exact match)",
        ),
        "recall": Task(
            "recall",
            "long-range recall",
            "exact",
            6,
            _recall,
            description="a code word on the first line, six filler sentences naming other words, then the "
            "question: the answer is > 1 S²-Attn group away from the question",
        ),
        "mix": Task(
            "mix",
            "two tasks in one",
            "exact",
            40,
            _mix,
            description="dates and json items mixed half and half (strict strings): how a router splits inputs",
        ),
        "add3": Task(
            "add3", "arithmetic", "number", 6, _add3, description="sum of two 3-digit numbers, answer only"
        ),
        "json": Task(
            "json", "extraction", "json", 40, _json, description="sentence → 4-field JSON (name, age, job, city)"
        ),
        "kv": Task("kv", "retrieval", "exact", 6, _kv, description="30 key: value lines, return one key's value"),
    }


def make_task(name: str, user_tasks: dict[str, dict[str, Any]] | None = None) -> Task:
    """A built-in task or one declared under ``tasks:`` in the arena spec.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or a malformed user task.
    """
    builtin = builtin_tasks()
    user_tasks = user_tasks or {}
    if name in user_tasks:
        d = dict(user_tasks[name])
        allowed = {"train_file", "test_file", "checker", "max_new_tokens", "skill", "description"}
        bad = set(d) - allowed
        if bad:
            raise ValueError(f"task {name!r}: unknown key(s) {sorted(bad)}; valid: {sorted(allowed)}")
        resolve_checker(d.get("checker", "exact"))
        return Task(
            name=name,
            skill=str(d.get("skill", "user")),
            checker=str(d.get("checker", "exact")),
            max_new_tokens=int(d.get("max_new_tokens", 32)),
            train_file=d.get("train_file"),
            test_file=d.get("test_file"),
            description=str(d.get("description", "user task")),
        )
    if name in builtin:
        return builtin[name]
    valid = list(builtin) + list(user_tasks)
    raise ValueError(f"unknown task {name!r}.{closest(name, valid)} Valid tasks: {', '.join(valid)}")
