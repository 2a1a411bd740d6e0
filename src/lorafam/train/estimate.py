"""Memory needed to train an adapter, before loading any weight.

total = weights (at their stored bits) + adapter + its gradients + optimizer state + activations saved for
backward + the loss's logits + a runtime constant. Works on named architecture presets (``llama2-7b``...), on a
local model folder's ``config.json``, or on a :class:`~lorafam.train.config.TrainConfig`.

Activation model for a Llama-style decoder layer, per token, with every projection adapted: the two RMSNorm
inputs and outputs (4h; the normed input is what the LoRA branches keep), what attention keeps (q, k and v after
the grouped-query repeat, and its output: 4h), the ``o_proj`` input (h), and the MLP's gate, SiLU, up and product
tensors (4i) — ``9h + 4i`` values. Attention uses a fused kernel (no seq×seq matrix). That saved-tensor count is
multiplied by :data:`AUTOGRAD_SLACK`: backward's temporaries and the allocator's unreturned memory, measured as
peak RSS over the count on SmolLM2 (batch 4 × 256, fp32, this CPU; ``benchmarks/trainer_overhead.py``) — a
calibration from one machine, checked on another shape in ``test_train_estimate``. With gradient checkpointing
only each layer's input (h) is kept, plus one layer's full set during its backward. The loss keeps at most
``chunk × vocab`` fp32 logits alive (×3: logits, softmax, gradient); the unchunked path keeps
``batch × seq × vocab``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
NF4_BITS = 4.125  # 4-bit codes + one bf16 scale per 64 values, double-quantised (torchao's layout)
CPU_RUNTIME_GIB = 0.6  # torch + transformers + tokenizer: 0.35 resident after import, more once kernels run
AUTOGRAD_SLACK = 1.6  # measured peak / saved-tensor count (see the module docstring)
CUDA_RUNTIME_GIB = 0.5  # CUDA context + kernels


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder-only transformer (what memory depends on)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = False

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one layer."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


PRESETS: dict[str, Arch] = {
    "smollm2-135m": Arch(576, 30, 9, 3, 1536, 49152, tied=True),
    "smollm2-360m": Arch(960, 32, 15, 5, 2560, 49152, tied=True),
    "llama2-7b": Arch(4096, 32, 32, 32, 11008, 32000),
    "llama2-13b": Arch(5120, 40, 40, 40, 13824, 32000),
    "llama2-70b": Arch(8192, 80, 64, 8, 28672, 32000),
    "llama3-8b": Arch(4096, 32, 32, 8, 14336, 128256),
    "llama3-70b": Arch(8192, 80, 64, 8, 28672, 128256),
    "mistral-7b": Arch(4096, 32, 32, 8, 14336, 32000),
}


@dataclass
class MemoryEstimate:
    """Components in GiB."""

    weights: float
    adapter: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    runtime: float
    trainable_params: int
    total_params: int

    @property
    def total(self) -> float:
        return (
            self.weights
            + self.adapter
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.runtime
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def arch_from_config(path: str | Path) -> Arch:
    """Read a local transformers ``config.json`` (Llama/Mistral/Qwen-style keys)."""
    cfg_file = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: no config.json to estimate from")
    c = json.loads(cfg_file.read_text())
    try:
        heads = c["num_attention_heads"]
        return Arch(
            hidden=c["hidden_size"],
            layers=c["num_hidden_layers"],
            heads=heads,
            kv_heads=c.get("num_key_value_heads", heads),
            intermediate=c["intermediate_size"],
            vocab=c["vocab_size"],
            tied=bool(c.get("tie_word_embeddings", False)),
        )
    except KeyError as exc:
        raise ValueError(f"{cfg_file}: missing {exc.args[0]!r}; only Llama-style configs are supported") from exc


def resolve_arch(model: str | Arch | None) -> Arch:
    """A preset name, a local folder with config.json, an :class:`Arch`, or None (the embedded default)."""
    if isinstance(model, Arch):
        return model
    if model in (None, "", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        return PRESETS["smollm2-135m"]
    if model in PRESETS:
        return PRESETS[model]
    if Path(str(model)).expanduser().exists():
        return arch_from_config(Path(str(model)).expanduser())
    raise ValueError(f"model {model!r}: not a preset ({', '.join(PRESETS)}) nor a local folder with config.json")


def estimate_memory(
    model: str | Arch | None = None,
    *,
    quantization_bit: int | None = None,
    bf16: bool = False,
    rank: int = 8,
    targets: list[str] | str = "all",
    batch_size: int = 1,
    seq_len: int = 1024,
    gradient_checkpointing: bool = False,
    chunked_loss: bool = True,
    loss_chunk_size: int = 512,
    optimizer_states: int = 2,
    device: str = "cpu",
) -> MemoryEstimate:
    """Estimate training memory (GiB) for one configuration; see the module docstring for the model.

    ``quantization_bit``: 4 (NF4 base linears), 16 or 32; default 16 with ``bf16`` else 32.
    """
    a = resolve_arch(model)
    wbits = quantization_bit or (16 if bf16 else 32)
    if wbits not in (4, 16, 32):
        raise ValueError(f"quantization_bit must be 4, 16 or 32, got {quantization_bit}")
    float_bytes = 2 if bf16 or wbits == 16 else 4
    shapes = a.linear_shapes()
    chosen = list(shapes) if targets in ("all", "all-linear") else [t for t in shapes if t in targets]
    linear_params = a.layers * sum(i * o for i, o in shapes.values())
    embed_params = a.vocab * a.hidden * (1 if a.tied else 2)
    norm_params = a.layers * 2 * a.hidden + a.hidden
    linear_bytes = linear_params * (NF4_BITS / 8 if wbits == 4 else float_bytes)
    weights = linear_bytes + (embed_params + norm_params) * float_bytes
    trainable = a.layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in chosen)
    adapter = trainable * 4  # adapters and their optimizer state stay fp32
    act_bytes = 2 if bf16 else 4
    tokens = batch_size * seq_len
    per_layer = 9 * a.hidden + 4 * a.intermediate
    if gradient_checkpointing:
        acts = tokens * (a.layers * a.hidden + per_layer) * act_bytes * AUTOGRAD_SLACK
    else:
        acts = tokens * a.layers * per_layer * act_bytes * AUTOGRAD_SLACK
    acts += tokens * a.hidden * 4 * 2  # final norm output + gathered hidden states for the loss
    rows = min(loss_chunk_size, tokens) if chunked_loss else tokens
    logits = rows * a.vocab * 4 * 3
    runtime = CUDA_RUNTIME_GIB if device.startswith("cuda") else CPU_RUNTIME_GIB
    return MemoryEstimate(
        weights=weights / GIB,
        adapter=adapter / GIB,
        gradients=adapter / GIB,
        optimizer=optimizer_states * adapter / GIB,
        activations=acts / GIB,
        logits=logits / GIB,
        runtime=runtime,
        trainable_params=trainable,
        total_params=linear_params + embed_params + norm_params + trainable,
    )


def estimate_for_config(cfg: Any, device: str = "cpu") -> MemoryEstimate:
    """The estimate for a :class:`~lorafam.train.config.TrainConfig` (batch = per-device micro-batch), with the
    rank and targets the member would really train with (:func:`lorafam.train.build.adapter_config`)."""
    from lorafam.train.build import adapter_config

    acfg = adapter_config(cfg)
    return estimate_memory(
        cfg.model_name_or_path,
        quantization_bit=cfg.quantization_bit,
        bf16=cfg.bf16,
        rank=acfg.rank,
        targets=acfg.targets if acfg.targets != "all-linear" else "all",
        batch_size=cfg.per_device_train_batch_size,
        seq_len=cfg.cutoff_len,
        gradient_checkpointing=cfg.gradient_checkpointing,
        loss_chunk_size=cfg.loss_chunk_size,
        device=device,
    )
