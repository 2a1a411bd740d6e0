"""Export an adapter as a llama.cpp LoRA adapter GGUF (``llama-cli -m base.gguf --lora adapter.gguf``, Ollama's
``ADAPTER``), written with the ``gguf`` package.

The file follows what llama.cpp's own ``convert_lora_to_gguf.py`` writes (read in ggml-org/llama.cpp):

- metadata ``general.type = "adapter"``, ``general.architecture`` = the base's (``llama`` here),
  ``adapter.type = "lora"`` and ``adapter.lora.alpha`` (float32);
- per adapted linear layer two tensors named after the base tensor in llama.cpp's naming (the ``gguf``
  package's tensor-name map: ``model.layers.3.self_attn.q_proj`` → ``blk.3.attn_q.weight``) plus ``.lora_a``
  and ``.lora_b``. In numpy order ``lora_a`` is A (r, in) and ``lora_b`` is B (out, r), so that in ggml's
  reversed order ``a.ne[0]`` equals the base tensor's ``ne[0]`` (in) and ``b.ne[1]`` its ``ne[1]`` (out);
- llama.cpp applies ``scale = alpha / rank`` with ``rank = b.ne[0]``: each layer's own scale (α/r, rsLoRA's
  α/√r, an exact or SVD export's) is folded into B and alpha is written as the rank, so ΔW = scale · B A exactly.
- Llama's Q and K projections are stored in llama.cpp with the rows of each head reordered (the converter
  interleaves the two halves of the rotary dimensions); transformers undoes that when it loads a GGUF. B of
  ``q_proj`` / ``k_proj`` gets the same row order here (A is unchanged), which the tests check against the base
  GGUF's own tensors.

Members are turned into plain LoRA factors first (:func:`lorafam.export.plain_factors`): copied for LoRA /
rsLoRA / LongLoRA, exact for Quantum-PEFT, SVD for DoRA / AdaLoRA; members that cannot be merged are refused.
Only decoder-block linear layers of a Llama-architecture base are supported (what llama.cpp's LoRA loader applies
to the embedded SmolLM2); ``lm_head`` (tied to the embeddings in SmolLM2) and trainable full copies
(``modules_to_save``) are refused by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

SUPPORTED_ARCHS = {"llama": "LLAMA"}


@dataclass
class GgufExport:
    """What :func:`export_gguf` wrote."""

    path: str
    route: str
    rank: int
    tensors: int
    arch: str
    notes: list[str] = field(default_factory=list)
    max_rel_error: float = 0.0  # SVD route: max over layers of the relative Frobenius error of ΔW (else 0)


def permute_rows_for_llama_cpp(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder the rows of a Q or K projection (or its LoRA B) the way llama.cpp's Llama converter does: within
    each head, the rows of the two rotary halves are interleaved (row j of half h goes to row 2j + h)."""
    out = w.shape[0]
    head_dim = out // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _arch_of(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_ARCHS:
        raise ValueError(
            f"export --to gguf supports Llama-architecture bases (model_type llama, as the embedded SmolLM2); this "
            f"base is {model_type!r}. Export with --to lora and use llama.cpp's convert_lora_to_gguf.py instead"
        )
    return model_type


def export_gguf(
    model: nn.Module,
    out_file: str | os.PathLike[str],
    name: str = "default",
    rank: int | None = None,
    dtype: str = "f32",
) -> GgufExport:
    """Write adapter ``name`` of ``model`` as a llama.cpp LoRA GGUF at ``out_file`` (atomically).

    Args:
        model: the base with the adapter attached (``lf.load_adapter``).
        out_file: the ``.gguf`` path to write.
        name: which attached adapter.
        rank: SVD route only (DoRA, AdaLoRA): the LoRA rank (default: the member's).
        dtype: ``f32`` (default) or ``f16`` tensors.

    Raises:
        ValueError: an unsupported architecture or module, a member that cannot be merged, a bad rank.
    """
    import gguf

    from lorafam.export import plain_factors

    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype={dtype!r}; expected f32 or f16")
    arch = _arch_of(model)
    cfg = model.config
    n_blocks = int(cfg.num_hidden_layers)
    n_head = int(cfg.num_attention_heads)
    n_head_kv = int(getattr(cfg, "num_key_value_heads", None) or n_head)
    from lorafam.core.inject import configs

    cfg_of = configs(model).get(name)
    copies = cfg_of.modules_to_save if cfg_of is not None else None
    if copies:
        raise ValueError(f"adapter {name!r} trains full module copies (modules_to_save: {copies}); llama.cpp "
                         "LoRA adapters hold only low-rank factors")  # fmt: skip
    factors = plain_factors(model, name, rank)
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, SUPPORTED_ARCHS[arch]), n_blocks)
    np_dtype = np.float32 if dtype == "f32" else np.float16
    tensors: list[tuple[str, np.ndarray]] = []
    alpha = float(factors.rank)
    for path, (a, b, scale) in factors.layers.items():
        if path.endswith("lm_head") or "embed_tokens" in path:
            raise ValueError(f"{path}: LoRA on the output head / embeddings is not exported (llama.cpp ignores a "
                             "tied lm_head); train with lora_target: all, which leaves them out")  # fmt: skip
        hf_name = path.removeprefix("base_model.model.") + ".weight"
        target = names.get_name(hf_name, try_suffixes=(".weight",))
        if target is None:
            raise ValueError(
                f"{path}: no llama.cpp tensor corresponds to this module (gguf's name map for {arch})"
            )
        r = a.shape[0]
        b = b * (scale * r / alpha)  # llama.cpp multiplies by alpha / r
        if path.endswith("self_attn.q_proj"):
            b = permute_rows_for_llama_cpp(b, n_head)
        elif path.endswith("self_attn.k_proj"):
            b = permute_rows_for_llama_cpp(b, n_head_kv)
        tensors.append((f"{target}.lora_a", a.numpy().astype(np_dtype)))
        tensors.append((f"{target}.lora_b", b.numpy().astype(np_dtype)))
    if not tensors:
        raise ValueError(f"adapter {name!r} adapts no linear layer")
    out = Path(out_file)
    _write_adapter_gguf(out, arch, alpha, f"lorafam {factors.route} export", tensors)
    notes = []
    if factors.route == "svd":
        notes.append(f"SVD to rank {factors.rank}: max relative error {max(factors.errors, default=0.0):.2e}")
    error = max(factors.errors, default=0.0) if factors.route == "svd" else 0.0
    return GgufExport(str(out), factors.route, factors.rank, len(tensors), arch, notes, error)


def _write_adapter_gguf(
    out: Path, arch: str, alpha: float, title: str, tensors: list[tuple[str, np.ndarray]]
) -> None:
    """The adapter GGUF (llama.cpp's ``general.type = adapter`` keys, then the tensors), written atomically."""
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), arch=arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(title)
        for tname, arr in tensors:
            writer.add_tensor(tname, arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
