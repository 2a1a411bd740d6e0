"""The family registry: the single source of truth for members and their implementations.

Two tables:

- ``METHODS``: implementation key → :class:`MethodSpec` (config class, adapter class, PEFT type). Injection,
  checkpoint I/O and the contract tests read it.
- ``MEMBERS``: family member name → :class:`FamilyMember` (lineage metadata plus how to build it: which method,
  preset config fields, optimizer options). The CLI's method choices, the arena and the report read it.

Several members share one implementation (rsLoRA, LoRA+ and QLoRA are LoRA with a flag, an optimizer and a
quantised base), which is why the two tables are separate. Adding a member = one file in ``methods/`` + one
entry in each table + its reference test.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from lorafam.helpers import check_keys, closest

if TYPE_CHECKING:  # the registry is the ground floor: it names core's types but imports no core at run time
    from lorafam.core.adapter import Adapter
    from lorafam.core.config import AdapterConfig


@dataclass(frozen=True)
class MethodSpec:
    """How one adapter implementation is built and stored."""

    key: str
    config_path: str  # "module:Class"
    adapter_path: str  # "module:Class"
    peft_type: str  # "LORA", "ADALORA", or our own ("LORAFAM_QUANTUM", ...)
    peft_compatible: bool  # PEFT itself can load it
    tolerance: float = 1e-5  # contract-test tolerance (float32); looser only with a reason
    contract_kwargs: dict[str, Any] = field(default_factory=dict)  # extra config fields for the tiny test model
    callbacks: str | None = None  # "module:Class" of the trainer callback this member needs (train/...)
    mixable: bool = False  # can be an expert of a mixture (no model-level state or callbacks of its own)
    loraplus: bool = True  # takes the LoRA+ optimizer rule (``loraplus_lr_ratio``): it has ``b``-role parameters
    plain_lora: bool = False  # its factors are plain PEFT LoRA as they are (export copies them)

    @property
    def callback_cls(self) -> type | None:
        return _load(self.callbacks) if self.callbacks else None

    @property
    def config_cls(self) -> type[AdapterConfig]:
        return _load(self.config_path)

    @property
    def adapter_cls(self) -> type[Adapter]:
        return _load(self.adapter_path)


@dataclass(frozen=True)
class RunFacts:
    """What a training run knows that some member configs need (see :meth:`AdapterConfig.run_fields`)."""

    total_steps: int | None = None
    """Optimizer steps of the run (AdaLoRA's budget schedule)."""
    assistant_header: list[int] | None = None
    """Token ids that open the answer in the prompt format (aLoRA's invocation when none is given)."""


@dataclass(frozen=True)
class TrainDefaults:
    """Training settings a member recommends; None = the trainer's (or the arena's) own default."""

    lr: float | None = None
    """AdamW learning rate (AdaLoRA: 5e-3, because Λ starts at zero; docs/adalora.md)."""
    warmup_steps: int | None = None
    """Linear warm-up steps."""
    loraplus_ratio: float | None = None
    """LoRA+ ratio η_B / η_A (the ``loraplus`` member: 16)."""

    def as_dict(self) -> dict[str, Any]:
        """The settings that are set, by name."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class FamilyMember:
    """One member of the LoRA family, with verified lineage metadata (see shared FAMILY.md)."""

    name: str
    method: str  # key into METHODS
    title: str
    authors: str
    origin: str  # institution(s)
    year: int
    venue: str
    arxiv: str
    idea: str  # one line
    parent: str | None
    preset: dict[str, Any] = field(default_factory=dict)  # config fields this member sets
    train: TrainDefaults = field(default_factory=TrainDefaults)  # recommended lr / warm-up / LoRA+ ratio
    dora_variant: str | None = None  # the member that ``use_dora: true`` turns this one into
    in_peft: bool = False  # Hugging Face PEFT implements it too
    notes: str = ""

    @property
    def train_options(self) -> dict[str, Any]:
        """:attr:`train` as a dict of the settings that are set (``lr``, ``warmup_steps``, ``loraplus_ratio``)."""
        return self.train.as_dict()

    def make_config(
        self,
        fields: Mapping[str, Any] | None = None,
        /,
        *,
        common: Mapping[str, Any] | None = None,
        run: RunFacts | None = None,
        where: str = "",
        **more: Any,
    ) -> AdapterConfig:
        """The one member → config builder (the trainer, the arena and the contract tests call it).

        Precedence: the config class's defaults < ``common`` < the member's ``preset`` < ``fields``. Pass in
        ``fields`` only what the caller really set (the trainer passes the YAML keys the user wrote, so AdaLoRA
        keeps its initial rank 12 and LongLoRA its q/k/v/o targets when the YAML does not name them); keyword
        arguments join ``fields``. ``common`` holds settings shared by a whole comparison (the arena's rank, alpha,
        dropout, targets): each applies only where the member's config has that field and its preset does not set
        it. Facts of the run (:class:`RunFacts`: the number of steps, the prompt format's assistant header) go to
        the member's :meth:`AdapterConfig.run_fields`, which fills the fields that need them unless the preset or
        ``fields`` already did.

        Raises:
            ValueError: a key that is not a field of the member's config (named, with the closest valid one and
                ``where`` as the prefix), or the config's own validation error.
        """
        cls = METHODS[self.method].config_cls
        given = {**(fields or {}), **more}
        names = cls.field_names()
        check_keys(given, names, where or f"member {self.name} ({cls.__name__})")
        shared = {k: v for k, v in (common or {}).items() if k in names and k not in self.preset}
        chosen = {**shared, **self.preset, **given}
        filled = cls.run_fields(chosen, run) if run is not None else {}
        return cls(**{**filled, **chosen})


def _load(path: str) -> Any:
    return _load_cached(path)


@cache
def _load_cached(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


METHODS: dict[str, MethodSpec] = {
    "lora": MethodSpec(
        "lora",
        "lorafam.methods.lora:LoraConfig",
        "lorafam.methods.lora:LoraAdapter",
        "LORA",
        True,
        mixable=True,
        plain_lora=True,
    ),
    "dora": MethodSpec(
        "dora", "lorafam.methods.dora:DoraConfig", "lorafam.methods.dora:DoraAdapter", "LORA", True, mixable=True
    ),
    "longlora": MethodSpec(
        "longlora",
        "lorafam.methods.longlora:LongLoraConfig",
        "lorafam.methods.longlora:LongLoraAdapter",
        "LORA",  # PEFT loads it as LoRA + modules_to_save (inference); lorafam_config restores the rest
        True,
        contract_kwargs={"targets": "all-linear"},  # the paper's q/k/v/o names do not exist in GPT-2
        plain_lora=True,
    ),
    "adalora": MethodSpec(
        "adalora",
        "lorafam.methods.adalora:AdaLoraConfig",
        "lorafam.methods.adalora:AdaLoraAdapter",
        "ADALORA",
        True,
        contract_kwargs={"target_rank": 2},
        callbacks="lorafam.train.adalora_allocator:AdaLoraAllocator",
    ),
    "alora": MethodSpec(
        "alora",
        "lorafam.methods.alora:ALoraConfig",
        "lorafam.methods.alora:ALoraAdapter",
        "LORA",
        True,
        # (154, 28) occurs in row 0 of the contract input (tests/contract `_x()`), not in row 1: mixed rows
        contract_kwargs={"invocation_tokens": [154, 28]},
    ),
    "quantum": MethodSpec(
        "quantum",
        "lorafam.methods.quantum:QuantumConfig",
        "lorafam.methods.quantum:QuantumAdapter",
        "LORAFAM_QUANTUM",  # no PEFT type exists; `lorafam export --to lora` writes an exact plain-LoRA copy
        False,
        mixable=True,
        loraplus=False,  # angles and singular values: no B factor for LoRA+ to speed up
    ),
    "mixture": MethodSpec(
        "mixture",
        "lorafam.methods.mixture:MixtureConfig",
        "lorafam.methods.mixture:MixtureAdapter",
        "LORAFAM_MIXTURE",  # a manifest of member configs + their tensors; not mergeable (input-dependent gates)
        False,
        callbacks="lorafam.train.mixture_callback:MixtureCallback",
    ),
}

MEMBERS: dict[str, FamilyMember] = {
    "lora": FamilyMember(
        name="lora",
        method="lora",
        title="LoRA: Low-Rank Adaptation of Large Language Models",
        authors="Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang, Chen",
        origin="Microsoft",
        year=2021,
        venue="ICLR 2022",
        arxiv="2106.09685",
        idea="Freeze W0 and learn a low-rank update BA beside it; merge it away for zero inference cost.",
        parent=None,
        dora_variant="dora",
        in_peft=True,
    ),
    "rslora": FamilyMember(
        name="rslora",
        method="lora",
        title="A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA",
        authors="Kalajdzievski",
        origin="Tenyx",
        year=2023,
        venue="arXiv preprint",
        arxiv="2312.03732",
        idea="Scale the update by α/√r instead of α/r so that larger ranks keep learning.",
        parent="lora",
        preset={"use_rslora": True},
        in_peft=True,
    ),
    "loraplus": FamilyMember(
        name="loraplus",
        method="lora",
        title="LoRA+: Efficient Low Rank Adaptation of Large Models",
        authors="Hayou, Ghosh, Yu",
        origin="UC Berkeley",
        year=2024,
        venue="ICML 2024",
        arxiv="2402.12354",
        idea="Same adapter, but B learns λ times faster than A (an optimizer change only).",
        parent="lora",
        train=TrainDefaults(loraplus_ratio=16.0),
        in_peft=True,
    ),
    "dora": FamilyMember(
        name="dora",
        method="dora",
        title="DoRA: Weight-Decomposed Low-Rank Adaptation",
        authors="Liu, Wang, Yin, Molchanov, Wang, Cheng, Chen",
        origin="NVIDIA, HKUST",
        year=2024,
        venue="ICML 2024 (oral)",
        arxiv="2402.09353",
        idea="Split W into a per-row magnitude and a direction; LoRA updates the direction, m is trained directly.",
        parent="lora",
        in_peft=True,
    ),
    "qlora": FamilyMember(
        name="qlora",
        method="lora",
        title="QLoRA: Efficient Finetuning of Quantized LLMs",
        authors="Dettmers, Pagnoni, Holtzman, Zettlemoyer",
        origin="University of Washington",
        year=2023,
        venue="NeurIPS 2023",
        arxiv="2305.14314",
        idea="Freeze the base in 4-bit NormalFloat with double-quantised scales and train LoRA through it.",
        parent="lora",
        preset={"quantize": "nf4"},
        in_peft=True,
        notes="quantize='nf4' works under any member (QDoRA = dora + nf4). torchao NF4 storage; merge_and_unload "
        "returns a dequantised float model (see docs/qlora.md).",
    ),
    "longlora": FamilyMember(
        name="longlora",
        method="longlora",
        title="LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models",
        authors="Chen, Qian, Tang, Lai, Liu, Han, Jia",
        origin="CUHK, MIT",
        year=2023,
        venue="ICLR 2024 (oral)",
        arxiv="2309.12307",
        idea="Extend context cheaply: shifted group attention (S²-Attn) in training, LoRA plus trainable "
        "embeddings and norms, full attention at inference.",
        parent="lora",
        in_peft=False,
        notes="Its 'LoRA+' (trainable embeddings and norms) is not Hayou et al.'s LoRA+. S²-Attn on llama, "
        "mistral, qwen2, qwen3, gpt2 (see docs/longlora.md).",
    ),
    "adalora": FamilyMember(
        name="adalora",
        method="adalora",
        title="Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
        authors="Zhang, Chen, Bukharin, Karampatziakis, He, Cheng, Chen, Zhao",
        origin="Georgia Tech, Princeton, Microsoft",
        year=2023,
        venue="ICLR 2023",
        arxiv="2303.10512",
        idea="Write ΔW as PΛQ (SVD form) and move rank from unimportant to important matrices while training.",
        parent="lora",
        train=TrainDefaults(lr=5e-3),
        in_peft=True,
        notes="Rank allocation is a trainer callback; recommended lr 5e-3 (Λ starts at zero; docs/adalora.md).",
    ),
    "alora": FamilyMember(
        name="alora",
        method="alora",
        title="Activated LoRA: Fine-tuned LLMs for Intrinsics",
        authors="Greenewald, Lastras, Parnell, Shah, Popa, Zizzo, Gunasekara, Rawat, Cox",
        origin="IBM Research",
        year=2025,
        venue="arXiv preprint",
        arxiv="2504.12397",
        idea="LoRA that switches on only from an invocation sequence onward, so the base model's KV cache of the "
        "history is reused as is.",
        parent="lora",
        in_peft=True,
        notes="Not mergeable. Base-cache reuse: lf.PrefixCache + lf.generate (see docs/alora.md). PEFT stores it as "
        "LORA + alora_invocation_tokens; upstream vLLM support is not confirmed.",
    ),
    "quantum": FamilyMember(
        name="quantum",
        method="quantum",
        title="Quantum-PEFT: Ultra parameter-efficient fine-tuning",
        authors="Koike-Akino, Tonin, Wu, Wu, Candogan, Cevher",
        origin="MERL, EPFL (LIONS)",
        year=2025,
        venue="ICLR 2025",
        arxiv="2503.05431",
        idea="ΔW = U Λ Vᵀ where U, V come from a small Pauli-rotation circuit: parameters grow with log N, not N.",
        parent="adalora",
        notes="No public code; gate order, angle init and the non-power-of-two masking are lorafam's reading "
        "(docs/quantum-peft.md). Export to an exact plain-LoRA adapter with `lorafam export --to lora`.",
    ),
    "mopeft": FamilyMember(
        name="mopeft",
        method="mixture",
        title="MoPEFT: A Mixture-of-PEFTs for the Segment Anything Model",
        authors="Sahay, Savakis",
        origin="Rochester Institute of Technology",
        year=2024,
        venue="CVPR 2024 Workshop on Foundation Models (arXiv comment); listed in CVPRW 2025 proceedings",
        arxiv="2405.00293",
        idea="Several PEFT modules side by side in each layer, weighted by a learned gate (mixture-of-experts style).",
        parent="lora",
        preset={"experts": ["lora", "dora", "quantum"]},
        notes="The paper mixes LoRA, prefix tuning and adapters in SAM; lorafam mixes family members (default LoRA + "
        "DoRA + Quantum-PEFT) with a token or sequence router and a Switch-style balance loss (docs/mopeft.md).",
    ),
}


def method_spec(key: str) -> MethodSpec:
    if key not in METHODS:
        raise ValueError(f"unknown method {key!r}.{closest(key, list(METHODS))} Valid: {', '.join(METHODS)}")
    return METHODS[key]


def member(name: str) -> FamilyMember:
    if name not in MEMBERS:
        raise ValueError(
            f"unknown family member {name!r}.{closest(name, list(MEMBERS))} Valid: {', '.join(MEMBERS)}"
        )
    return MEMBERS[name]


def spec_for_config(config: AdapterConfig) -> MethodSpec:
    return method_spec(type(config).method)


def family() -> list[FamilyMember]:
    """All members, oldest first (the order of the family history)."""
    return sorted(MEMBERS.values(), key=lambda m: (m.year, list(MEMBERS).index(m.name)))
