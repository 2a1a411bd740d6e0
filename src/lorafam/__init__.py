"""lorafam: the LoRA family of parameter-efficient fine-tuning methods in one library.

import lorafam as lf
model = lf.load_model()
lf.attach(model, lf.LoraConfig(rank=16, alpha=32, targets="all-linear"))
opt = lf.make_optimizer(model, lr=2e-4, loraplus_ratio=16)
lf.save_adapter(model, "out/")
"""

from __future__ import annotations

import logging as _logging
import os as _os

_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# torchao (imported by transformers when installed) logs harmless "Failed to load _C*.so" lines for GPU kernels
# this CPU build lacks, and torch's pytree logs a deprecation notice for torchao's enums: keep user output clean.
_logging.getLogger("torchao").setLevel(_logging.ERROR)
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)

from lorafam._version import __version__ as __version__  # noqa: E402
from lorafam.core.adapter import AdaptedLayer, Adapter  # noqa: E402
from lorafam.core.allocator import AllocatorTuning, tune_allocator  # noqa: E402
from lorafam.core.checkpoint import load_adapter, save_adapter  # noqa: E402
from lorafam.core.config import AdapterConfig  # noqa: E402
from lorafam.core.inject import (  # noqa: E402
    active_adapters,
    attach,
    configs,
    detach,
    disabled,
    drop_caches,
    merge,
    merge_and_unload,
    set_active,
    trainable_summary,
    unload,
    unmerge,
)
from lorafam.core.precision import cast_frozen  # noqa: E402
from lorafam.family import MEMBERS, METHODS, family, member  # noqa: E402
from lorafam.methods.adalora import AdaLoraConfig  # noqa: E402
from lorafam.methods.alora import ALoraConfig  # noqa: E402
from lorafam.methods.dora import DoraConfig  # noqa: E402
from lorafam.methods.longlora import LongLoraConfig  # noqa: E402
from lorafam.methods.lora import LoraConfig  # noqa: E402
from lorafam.methods.mixture import MixtureConfig, router_stats  # noqa: E402
from lorafam.methods.quantum import QuantumConfig  # noqa: E402
from lorafam.models import load_model, load_tokenizer, tiny_gpt2, tiny_llama  # noqa: E402
from lorafam.optim import make_optimizer, param_groups  # noqa: E402
from lorafam.serve.engine import GenerationResult, PrefixCache, generate  # noqa: E402

__all__ = [
    "MEMBERS",
    "METHODS",
    "Adapter",
    "AllocatorTuning",
    "AdaLoraConfig",
    "ALoraConfig",
    "AdaptedLayer",
    "AdapterConfig",
    "GenerationResult",
    "DoraConfig",
    "LoraConfig",
    "LongLoraConfig",
    "MixtureConfig",
    "QuantumConfig",
    "PrefixCache",
    "active_adapters",
    "attach",
    "cast_frozen",
    "configs",
    "detach",
    "disabled",
    "drop_caches",
    "family",
    "generate",
    "load_adapter",
    "load_model",
    "load_tokenizer",
    "make_optimizer",
    "member",
    "merge",
    "merge_and_unload",
    "param_groups",
    "router_stats",
    "save_adapter",
    "set_active",
    "tiny_gpt2",
    "tiny_llama",
    "trainable_summary",
    "tune_allocator",
    "unload",
    "unmerge",
]
