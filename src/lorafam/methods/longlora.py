"""LongLoRA: LoRA on the attention projections + S²-Attn + trainable embeddings and norms + position interpolation.

"LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models", Chen, Qian, Tang, Lai, Liu, Han, Jia,
ICLR 2024 — https://arxiv.org/abs/2309.12307

Update rule (per targeted projection, as LoRA):  h = W0 x + s · B A x,  A ∈ R^{r×in}, B ∈ R^{out×r}, s = α/r,
with r = 8, α = 16 on q, k, v, o in the paper's recipe. Around it, three model-level changes:

1. S²-Attn during training (``lorafam.attention.s2attn``): causal attention within groups of G = ratio · N
   tokens, half of the heads shifted by G/2 — O(N·G) instead of O(N²). Inference uses full attention.
2. The embeddings and normalisation layers train too. The paper calls LoRA plus these "LoRA+"; that is
   unrelated to Hayou et al.'s LoRA+ learning-rate rule (our ``loraplus`` member). They are saved with the
   adapter under PEFT's ``modules_to_save`` convention (original module keys), so PEFT can load the file.
3. Position interpolation (Chen et al., 2023): linear RoPE scaling by ⌈target_context / original context⌉.

Merge: the LoRA part merges like LoRA; the embeddings and norms were trained in place, so a merged model
already carries them. Note that ``unload``/``disabled`` remove the LoRA part only: the trained embeddings and
norms, and the RoPE scaling, stay in the base model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from lorafam.attention import s2attn
from lorafam.core.config import AdapterConfig
from lorafam.core.record import Undo
from lorafam.core.record import entry as record_entry
from lorafam.core.saved_modules import embedding_and_norm_params
from lorafam.methods.lora import LoraAdapter, LoraConfig


@dataclass(kw_only=True)
class LongLoraConfig(LoraConfig):
    """LongLoRA. Defaults follow the paper's recipe (r=8, α=16 on q, k, v, o; group ratio 1/4)."""

    method: ClassVar[str] = "longlora"

    targets: list[str] | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    s2attn: bool = True
    """Use S²-Attn in training (False: plain full attention, for comparison)."""
    group_size_ratio: float = 0.25
    """G / N: 1/k for a whole number k (the sequence is cut into k groups)."""
    shift_wraparound: bool = False
    """Roll the shifted heads as the paper's reference code does (leaks the future within training); off by default."""
    trainable_embeddings_and_norms: bool = True
    """Also train every embedding and normalisation layer (the paper's "LoRA+")."""
    target_context: int | None = None
    """Context length to reach by linear RoPE scaling (position interpolation); None keeps the model's."""

    def __post_init__(self) -> None:
        super().__post_init__()
        s2attn.S2AttnSettings(self.group_size_ratio, self.shift_wraparound)  # validates the ratio
        if self.target_context is not None and (
            not isinstance(self.target_context, int)
            or isinstance(self.target_context, bool)
            or self.target_context <= 0
        ):
            raise ValueError(f"{type(self).__name__}: 'target_context' must be a positive int or None")

    def to_peft(self) -> dict[str, Any]:
        d = super().to_peft()
        d["lorafam_config"] = self.to_dict()  # PEFT reads it as LoRA (+ modules_to_save); we restore all fields
        if self.target_context is not None:  # PEFT cannot change the base config: say what another tool must do
            d["lorafam_base_model_changes"] = {
                "rope_parameters": {
                    "rope_type": "linear",
                    "factor": "ceil(target_context / max_position_embeddings)",
                },
                "target_context": self.target_context,
                "note": "position interpolation: set this RoPE scaling in the base model's config before loading "
                "the adapter in PEFT (config.rope_parameters / rope_scaling) or vLLM (--hf-overrides); lorafam "
                "applies it itself. Without it the outputs differ.",
            }
        return d

    @classmethod
    def accepts_peft(cls, d: dict[str, Any]) -> bool:
        return False  # plain PEFT LoRA files are LoRA; ours carry ``lorafam_config``


class LongLoraAdapter(LoraAdapter):
    """The LoRA part of LongLoRA on one projection (the model-level parts live in ``on_attach``)."""

    @classmethod
    def on_attach(cls, model: nn.Module, config: AdapterConfig, name: str) -> None:
        """S²-Attn on (undone on detach), embeddings and norms recorded as extra trainable tensors (saved with the
        adapter as ``modules_to_save``), RoPE scaling applied (kept: it is part of the trained model)."""
        assert isinstance(config, LongLoraConfig)
        entry = record_entry(model, name)
        if config.target_context is not None:  # first: it validates before anything attention-related changes
            apply_position_interpolation(model, config.target_context)
        if config.s2attn:
            settings = s2attn.S2AttnSettings(config.group_size_ratio, config.shift_wraparound)
            previous = s2attn.enable(model, settings)
            entry.handles.append(Undo(functools.partial(s2attn.disable, model, previous)))
        if config.trainable_embeddings_and_norms:
            entry.trainable.update(embedding_and_norm_params(model))
            entry.aliases.update(tied_head_alias(model, entry.trainable))


# ---------------------------------------------------------------------------------------------------------------
def tied_head_alias(model: nn.Module, trained: dict[str, nn.Parameter]) -> dict[str, nn.Parameter]:
    """{file key: weight} of an output head that shares its weight with a trained embedding, else {}.

    PEFT's ``modules_to_save`` gives each listed module its own copy, so a file that lists only the embedding
    leaves PEFT's head on the untrained tied weight (logits 0.93 off ours on a tied model). The file therefore
    also carries the head, with the same values, and lists it: PEFT's two copies then hold what our one tensor
    holds (the record's ``aliases``: written, listed, and skipped on load).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None) if isinstance(head, nn.Module) else None
    if weight is None or not any(p is weight for p in trained.values()):
        return {}
    path = next(n for n, m in model.named_modules() if m is head)
    key = f"{path}.weight"
    return {} if key in trained else {key: weight}


# ---------------------------------------------------------------------------------------------------------------
def apply_position_interpolation(model: nn.Module, target_context: int) -> float:
    """Linear RoPE scaling so positions up to ``target_context`` map into the trained range. Returns the factor.

    factor = ⌈target_context / max_position_embeddings⌉ (LongLoRA's rule); 1 means nothing changes. The model
    config is updated (so a saved merged model keeps the scaling) and every rotary module recomputes its
    frequencies.

    Raises:
        ValueError: the model has no RoPE, or already uses a non-default RoPE type.
    """
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = model.config
    rope = getattr(config, "rope_parameters", None)
    original = getattr(config, "max_position_embeddings", None)
    if not isinstance(rope, dict) or "rope_type" not in rope or original is None:
        raise ValueError(
            f"target_context needs a model with rotary position embeddings; {config.model_type!r} has none"
        )
    factor = math.ceil(target_context / original)
    if factor <= 1:
        return 1.0
    if rope["rope_type"] != "default":
        raise ValueError(
            f"target_context: the model already uses rope_type={rope['rope_type']!r}; position interpolation "
            "is only applied on top of the default RoPE"
        )
    config.rope_parameters = {**rope, "rope_type": "linear", "factor": float(factor)}
    rotary = [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "rope_type")]
    if not rotary:
        raise ValueError(f"{type(model).__name__}: no rotary embedding module found for target_context")
    for m in rotary:
        inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS["linear"](config, m.inv_freq.device)
        m.inv_freq = inv_freq.to(m.inv_freq.dtype)
        if hasattr(m, "original_inv_freq"):
            m.original_inv_freq = inv_freq.clone().to(m.inv_freq.dtype)
        m.rope_type = "linear"
        m.attention_scaling = attention_scaling
    return float(factor)
