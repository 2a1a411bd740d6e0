"""The base adapter configuration shared by every family member.

Every member config is a dataclass that subclasses :class:`AdapterConfig` and adds only its own fields.
Validation happens in ``__post_init__`` and names the offending key, so the same errors reach Python users,
YAML files and the CLI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from lorafam.helpers import check_keys

if TYPE_CHECKING:
    from lorafam.family import MethodSpec, RunFacts

__all__ = ["AdapterConfig", "Targets"]

Targets = list[str] | str


@dataclass(kw_only=True)
class AdapterConfig:
    """Fields every family member shares.

    Subclasses set the class variable ``method`` (the registry key) and add their own fields.
    """

    method: ClassVar[str] = "base"
    peft_keys: ClassVar[tuple[str, ...]] = ()
    """Keys of PEFT's ``adapter_config.json`` this member reads beyond the shared LoRA ones (AdaLoRA's
    ``init_r``...); they are not reported as ignored on load."""

    rank: int = 8
    """Adapter rank r (for AdaLoRA: the initial rank; for Quantum-PEFT: K)."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by alpha / rank (alpha / sqrt(rank) with rsLoRA)."""
    dropout: float = 0.0
    """Dropout on the adapter branch input, in [0, 1)."""
    targets: Targets = "all-linear"
    """Module-name suffixes, a regex string, or "all-linear" (every Linear/Conv1D except the output head)."""
    exclude: list[str] = field(default_factory=list)
    """Module-name suffixes to leave alone even when ``targets`` matches them."""
    quantize: Literal["nf4"] | None = None
    """Store the frozen base weights of adapted layers in NF4 (QLoRA). None keeps them as they are."""
    compute_dtype: str = "float32"
    """Dtype the quantised base computes in ("float32" or "bfloat16"); only used with ``quantize``."""
    modules_to_save: list[str] | None = None
    """Whole modules to train as this adapter's own copies (PEFT's ``modules_to_save``), e.g. ``["lm_head"]`` or
    ``["embed_tokens"]``; names match like ``targets`` (equal to, or ending with, ``.name``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ValueError(f"{type(self).__name__}: 'rank' must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"{type(self).__name__}: 'alpha' must be > 0, got {self.alpha!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"{type(self).__name__}: 'dropout' must be in [0, 1), got {self.dropout!r}")
        if self.quantize not in (None, "nf4"):
            raise ValueError(f"{type(self).__name__}: 'quantize' must be None or 'nf4', got {self.quantize!r}")
        if self.compute_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                f"{type(self).__name__}: 'compute_dtype' must be one of float32, bfloat16, float16, "
                f"got {self.compute_dtype!r}"
            )
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str) or not all(
                isinstance(t, str) and t for t in self.modules_to_save
            ):
                raise ValueError(
                    f"{type(self).__name__}: 'modules_to_save' must be a list of module names (e.g. ['lm_head']) "
                    f"or None, got {self.modules_to_save!r}"
                )
            self.modules_to_save = list(self.modules_to_save) or None
        if isinstance(self.targets, (list, tuple)):
            if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
                raise ValueError(f"{type(self).__name__}: 'targets' must be a non-empty list of names")
            self.targets = list(self.targets)
        elif not isinstance(self.targets, str) or not self.targets:
            raise ValueError(
                f"{type(self).__name__}: 'targets' must be a list of suffixes, a regex or 'all-linear'"
            )

    @property
    def scaling(self) -> float:
        """The factor s applied to the low-rank update."""
        return float(self.alpha) / self.rank

    def packing_problem(self) -> str | None:
        """Why this adapter cannot train on packed rows (several samples per row), or None when it can.

        Members whose rule looks at a whole sequence (aLoRA's invocation, a per-sequence router) would see one
        packed row as one sample; the trainer refuses ``packing: true`` for them with this reason.
        """
        return None

    def mixture_problem(self) -> str | None:
        """Why this config cannot be one expert of a mixture (whose experts share one base), or None when it can.
        Checked after the registry's ``MethodSpec.mixable``; LoRA: a base-rewriting init, per-module patterns."""
        return None

    @property
    def peft_type(self) -> str:
        """The ``peft_type`` written to adapter files: the registry's (``MethodSpec.peft_type``), stored once."""
        return self.spec().peft_type

    @classmethod
    def spec(cls) -> MethodSpec:
        """This member's registry entry."""
        from lorafam.family import method_spec

        return method_spec(cls.method)

    # -- optional hooks: each has a default; docs/adding-a-member.md lists them ---------------------------------
    def rank_alpha_for(self, path: str) -> tuple[int, float]:
        """(rank, alpha) for the module at ``path`` (LoRA's ``rank_pattern``; AdaLoRA's kept triplets).
        Default: the config's ``rank`` and ``alpha`` everywhere."""
        return self.rank, float(self.alpha)

    def resolve(self, tokenizer: Any) -> AdapterConfig:
        """A copy with whatever needs the tokenizer filled in (aLoRA: ``invocation_string`` → token ids). The
        trainer calls it before attaching. Default: the config itself."""
        return self

    def to_peft(self) -> dict[str, Any]:
        """This config as PEFT's ``adapter_config.json`` keys (with ``peft_type``). Every member implements it."""
        raise NotImplementedError(f"{type(self).__name__} does not define to_peft()")

    @classmethod
    def accepts_peft(cls, d: dict[str, Any]) -> bool:
        """Whether a PEFT ``adapter_config.json`` dict (without our ``lorafam_config``) is this member's.
        At most one member may accept a given dict (tests/unit/test_registry.py). Default: never."""
        return False

    @classmethod
    def from_peft(cls, d: dict[str, Any], targets: Any) -> AdapterConfig:
        """Build the config from a PEFT dict that :meth:`accepts_peft` accepted (``targets`` already resolved)."""
        raise NotImplementedError(f"{cls.__name__} cannot be read from a PEFT config")

    @classmethod
    def check_peft(cls, d: dict[str, Any], source: str) -> None:
        """Refuse a PEFT dict that :meth:`accepts_peft` accepted but whose outputs this member cannot reproduce
        (LoRA: an ``init_lora_weights`` that rewrites the base in a way the file does not hold); raise
        ``ValueError`` starting with ``source``. Called before :meth:`from_peft`. Default: nothing to refuse."""

    def check_load(self, d: dict[str, Any], state: dict[str, Any]) -> None:
        """Check a file's tensors against this config before any module is built (AdaLoRA: each ``lora_E``'s rank
        against ``rank_pattern``); raise ``ValueError`` naming the tensor. Default: nothing to check."""

    # -- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that includes the method name."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, AdapterConfig):
                value = value.to_dict()
            elif isinstance(value, list) and value and isinstance(value[0], AdapterConfig):
                value = [v.to_dict() for v in value]
            out[f.name] = value
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """Build a config from ``to_dict`` output; unknown keys raise with the closest valid name."""
        data = dict(data)
        data.pop("method", None)
        check_keys(data, cls.field_names(), cls.__name__)
        return cls(**data)

    @classmethod
    def run_fields(cls, chosen: dict[str, Any], run: RunFacts) -> dict[str, Any]:
        """Fields this member fills from the run when the caller's ``chosen`` fields leave them open.

        Called by :meth:`lorafam.family.FamilyMember.make_config`; the result goes *under* ``chosen``. None by
        default; AdaLoRA takes the step count, aLoRA the assistant header as its invocation.
        """
        return {}
