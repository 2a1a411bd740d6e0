"""The arena's results schema: one JSON file per run with ``run_info`` / ``train_info`` / ``meta_info``.

The report reads only these files. Every block is a dataclass so the fields are named in one place; files are
written atomically (temporary file + rename) so an interrupted arena never leaves half a result behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lorafam.core.checkpoint import atomic_write_text

SCHEMA_VERSION = 2  # 2: per-item evaluation records (``evals``), per-example training losses


@dataclass
class RunInfo:
    """What was run and how it ended."""

    run_id: str
    impl: str  # "lorafam" | "peft" | "full" | "base"
    member: str  # family member name, or "full-ft" / "base"
    task: str
    seed: int
    budget: str
    spec_hash: str  # hash of the resolved settings: a changed setting re-runs
    status: str = "pending"  # "ok" | "failed" | "skipped"
    error: str = ""
    started_at: str = ""
    duration_s: float = 0.0
    cpu_s: float = 0.0  # user + system CPU seconds of the run's process (what an idle machine would need)
    peak_rss_mb: float = 0.0
    threads: int = 0
    device: str = "cpu"
    command: list[str] = field(default_factory=list)


@dataclass
class TrainInfo:
    """What happened: settings, curves, accuracy, probes. ``None`` means "not measured" (never a zero)."""

    settings: dict[str, Any] = field(default_factory=dict)
    adapter_config: dict[str, Any] = field(default_factory=dict)
    trainable_params: int = 0
    total_params: int = 0
    steps: int = 0
    train_seconds: float = 0.0
    seconds_per_step: float | None = None
    tokens_per_second: float | None = None
    final_loss: float | None = None
    loss_curve: list[list[float]] = field(default_factory=list)  # [[step, loss], ...]
    eval_curve: list[list[float]] = field(default_factory=list)  # [[step, exact match], ...]
    accuracy: float | None = None  # exact match on the test split after training (the final ``evals`` point)
    answer_nll: float | None = None  # mean over test items of the per-token answer NLL after training (nats)
    eval_metric: str = ""  # "teacher-forced" (one forward per item) | "generated" (greedy decoding + checker)
    item_keys: list[str] = field(default_factory=list)  # the test items' identities, in record order (pairing)
    # Per-item records, one entry per evaluation point (learning curve), the last one after training:
    #   {"step": int, "items": n, "em": [0|1 per item], "nll": [summed answer NLL per item, nats],
    #    "tokens": [answer tokens per item], "forgetting_kl": float|None, "forgetting_top1": float|None,
    #    "gates": [[mean gate per expert] per item] (mixtures only), "seconds": float}
    # Curve points may score only the first ``items`` test items (a fixed prefix); the last point scores them all.
    evals: list[dict[str, Any]] = field(default_factory=list)
    # Per step, each example's mean answer loss (same data order across runs of a seed: paired curves)
    example_losses: list[list[float]] = field(default_factory=list)
    # Tasks whose checker normalises (json, number): greedy generation on the first items at the end, beside the
    # teacher-forced score of the same items: {"items": k, "correct": [0|1], "tf_em": [0|1], "preds": [...]}
    generated: dict[str, Any] = field(default_factory=dict)
    correct: int = 0
    test_items: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)  # a few (prompt, gold, prediction) rows
    forgetting_kl: float | None = None  # nats/token, KL(base ‖ tuned) on general prompts
    forgetting_top1: float | None = None  # top-1 agreement with the base model
    adapter_bytes: int | None = None
    mergeable: bool | None = None
    merge_seconds: float | None = None
    decode_tokens_per_s: float | None = None  # unmerged adapter
    decode_tokens_per_s_base: float | None = None  # same process, adapter disabled
    base_weight_bytes: int | None = None  # storage of the frozen base weights (NF4 vs bf16)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetaInfo:
    """Where it ran: versions and machine (runs from another version or machine are kept apart)."""

    schema: int = SCHEMA_VERSION
    lorafam_version: str = ""
    git_commit: str = ""
    git_dirty: bool = False
    packages: dict[str, str] = field(default_factory=dict)
    python: str = ""
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def env_key(self) -> str:
        """Runs are comparable only within one (lorafam version, machine) pair."""
        m = self.machine
        return f"{self.lorafam_version}|{m.get('cpu', '')}|{m.get('cores', '')}|{m.get('accelerator', '')}"


@dataclass
class RunResult:
    """One run's file."""

    run_info: RunInfo
    train_info: TrainInfo
    meta_info: MetaInfo

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_info": asdict(self.run_info),
            "train_info": asdict(self.train_info),
            "meta_info": asdict(self.meta_info),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> RunResult:
        try:
            return cls(
                RunInfo(**_known(RunInfo, d["run_info"])),
                TrainInfo(**_known(TrainInfo, d["train_info"])),
                MetaInfo(**_known(MetaInfo, d["meta_info"])),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: not an arena result file ({exc})") from exc


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Fields of ``cls`` only: files from newer versions may carry more (they are then kept apart by env)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


# ---------------------------------------------------------------------------------------------------------------
def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON to ``path`` via a temporary file in the same folder and an atomic rename."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False, default=_json_default))


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def write_result(path: str | os.PathLike[str], result: RunResult) -> None:
    atomic_write_json(path, result.to_dict())


def read_result(path: str | os.PathLike[str]) -> RunResult:
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from exc
    return RunResult.from_dict(d, str(p))


def load_results(folder: str | os.PathLike[str]) -> tuple[list[tuple[Path, RunResult]], list[str]]:
    """Every result file under ``folder`` (recursively), plus a list of problems with unreadable files."""
    out: list[tuple[Path, RunResult]] = []
    problems: list[str] = []
    for p in sorted(Path(folder).rglob("*.json")):
        if p.name.startswith(".") or p.name in ("arena.json", "latest.json"):
            continue
        try:
            out.append((p, read_result(p)))
        except ValueError as exc:
            problems.append(str(exc))
    return out, problems


# ---------------------------------------------------------------------------------------------------------------
def spec_hash(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parents[3]
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def collect_meta(device: str = "cpu") -> MetaInfo:
    """Versions and machine facts for ``meta_info`` (cheap; no torch work)."""
    from importlib import metadata

    from lorafam._version import __version__

    packages: dict[str, str] = {}
    for name in ("torch", "transformers", "peft", "torchao", "safetensors", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    accelerator = ""
    if device.startswith("cuda"):
        import torch

        accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (absent)"
    try:
        import psutil

        ram = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        ram = 0.0
    status = _git("status", "--porcelain", "--untracked-files=no")
    return MetaInfo(
        lorafam_version=__version__,
        git_commit=_git("rev-parse", "HEAD"),
        git_dirty=bool(status),
        packages=packages,
        python=platform.python_version(),
        machine={
            "cpu": _cpu_name(),
            "cores": os.cpu_count() or 0,
            "ram_gib": ram,
            "platform": platform.platform(),
            "accelerator": accelerator,
        },
    )
