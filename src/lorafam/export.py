"""Export any attached member as a plain-LoRA PEFT adapter (``peft_type: LORA``: PEFT, vLLM, llama.cpp can load it).

Three routes, chosen per member:

- **copy**: plain LoRA / rsLoRA (and LongLoRA's LoRA part) are already PEFT LoRA: written as they are.
- **exact factors**: a member whose adapter offers ``lora_factors()`` → (A (r, in), B (out, r)) with
  ΔW = (α/r)·B A (Quantum-PEFT: A = Vᵀ, B = U diag(λ), r = K) is written with the same r and α, so PEFT's scale
  α/r reproduces ΔW exactly.
- **SVD**: any other mergeable member (DoRA, AdaLoRA): ΔW = delta_weight(W0) is truncated to rank r by SVD,
  B = U_r Σ_r, A = V_rᵀ, α = r (scale 1). Exact when rank ΔW ≤ r (AdaLoRA at r = its initial rank); DoRA's ΔW is
  generally full-rank, so the relative Frobenius error per layer is reported.

Members that cannot be merged (aLoRA, mixtures) have no single ΔW and are refused with their reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lorafam.core.checkpoint import CONFIG_NAME, PREFIX, WEIGHTS_NAME, atomic_write_dir, file_config
from lorafam.core.inject import adapted_layers, configs

VLLM_DEFAULT_MAX_RANK = 16  # vLLM's --max-lora-rank default (CONVENTIONS.md §3.2)
SVD_EXACT = 1e-4  # an SVD export whose per-layer relative error is below this reproduces ΔW to float32 rounding


@dataclass
class ExportReport:
    """What :func:`export_lora` wrote and how faithful it is."""

    out_dir: str
    method: str
    route: str  # "copy" | "exact" | "svd"
    rank: int
    alpha: float
    layers: int
    max_rel_error: float  # max over layers of ‖ΔW − (α/r)BA‖_F / ‖ΔW‖_F (0 for copy / exact up to rounding)
    notes: list[str] = field(default_factory=list)

    def compatibility(self) -> list[tuple[str, str, str]]:
        """(runtime, status, note) rows for the exported folder."""
        vllm = "yes" if self.rank <= VLLM_DEFAULT_MAX_RANK else "yes, with --max-lora-rank"
        return [
            ("PEFT", "yes", "PeftModel.from_pretrained (tested)"),
            ("vLLM", vllm, f"rank {self.rank}; plain LoRA keys only (not tested here: vLLM not installed)"),
            ("llama.cpp", "yes", "lorafam export --to gguf (tested by make interop on SmolLM2's GGUF)"),
            ("Ollama", "yes", "ADAPTER <dir> for Llama / Mistral / Gemma bases (not tested here)"),
            ("merge", "yes", "lorafam merge or PEFT merge_and_unload"),
        ]


def svd_warning(method: str, rank: int, error: float) -> str | None:
    """The warning for an SVD export that is not exact (None when it is), naming the member."""
    if error <= SVD_EXACT:
        return None
    why = (
        "DoRA's ΔW is full rank (its magnitude vector rescales every column of W), so no rank-r LoRA equals it; "
        if method == "dora"
        else ""
    )
    return (
        f"{method} exported to a rank-{rank} LoRA is approximate (max relative error of ΔW {error:.2e} over "
        f"layers): {why}outputs will differ from the {method} adapter's (docs/export.md gives measured figures). "
        "A larger --rank lowers the error; `lorafam merge` keeps the model exact"
    )


def source_compatibility(method: str, peft_compatible: bool, mergeable: bool) -> list[tuple[str, str, str]]:
    """(runtime, status, note) rows for the adapter *before* export."""
    if peft_compatible:
        return [("PEFT", "yes", "native format"), ("export --to lora", "only needed for DoRA/AdaLoRA serving", "")]
    rows = [("PEFT", "no", f"own peft_type for {method!r}"), ("vLLM / llama.cpp / Ollama", "no", "export first")]
    rows.append(("merge", "yes" if mergeable else "no", "lorafam only" if mergeable else "input-dependent"))
    return rows


@dataclass
class PlainFactors:
    """Adapter ``name`` as plain LoRA factors: per module path (A (r, in), B (out, r), scale) with
    ΔW = scale · B A, plus the file-level rank and alpha (scale = alpha / rank for every layer)."""

    route: str  # "copy" | "exact" | "svd"
    rank: int
    alpha: float
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    errors: list[float]


def _exportable(model: nn.Module, name: str):  # -> (AdapterConfig, MethodSpec)
    from lorafam.family import spec_for_config

    cfgs = configs(model)
    if name not in cfgs:
        raise ValueError(f"no adapter named {name!r} on this model; attached: {sorted(cfgs)}")
    cfg = cfgs[name]
    spec = spec_for_config(cfg)
    cls = spec.adapter_cls
    if not cls.mergeable:
        raise ValueError(f"{type(cfg).__name__} cannot be exported as plain LoRA: {cls.not_mergeable_reason}")
    return cfg, spec


def plain_factors(model: nn.Module, name: str = "default", rank: int | None = None) -> PlainFactors:
    """The LoRA factors of any mergeable member (copy for LoRA/rsLoRA/LongLoRA, exact, or SVD; see the module)."""

    cfg, spec = _exportable(model, name)
    layers = [(p, layer) for p, layer in adapted_layers(model) if name in layer.adapters]
    out: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    if spec.plain_lora:
        for path, layer in layers:
            ad = layer.adapters[name]
            a, b = ad.lora_A.detach().float().cpu(), ad.lora_B.detach().float().cpu()
            out[path] = (a.contiguous(), b.contiguous(), float(ad.scaling))
        return PlainFactors("copy", cfg.rank, float(cfg.alpha), out, [0.0] * len(out))
    errors: list[float] = []
    exact = all(layer.adapters[name].lora_factors() is not None for _, layer in layers)
    r = cfg.rank if exact else int(rank or cfg.rank)
    if r < 1:
        raise ValueError(f"'rank' must be >= 1, got {r}")
    alpha = float(cfg.alpha) if exact else float(r)
    for path, layer in layers:
        ad = layer.adapters[name]
        with torch.no_grad():
            delta = ad.delta_weight(layer.base_layer).float()  # (out, in)
            if exact:
                a, b = ad.lora_factors()
            else:
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                k = min(r, s.numel())
                a = torch.zeros(r, delta.shape[1])
                b = torch.zeros(delta.shape[0], r)
                a[:k], b[:, :k] = vh[:k], u[:, :k] * s[:k]
            approx = (alpha / r) * (b @ a)
            norm = float(delta.norm())
            errors.append(float((delta - approx).norm()) / norm if norm > 0 else 0.0)
        out[path] = (a.float().contiguous().cpu(), b.float().contiguous().cpu(), alpha / r)
    return PlainFactors("exact" if exact else "svd", r, alpha, out, errors)


def export_lora(model: nn.Module, out_dir: str | os.PathLike[str], name: str = "default", rank: int | None = None):
    """Write adapter ``name`` of ``model`` to ``out_dir`` as a plain PEFT LoRA adapter. Returns an ExportReport.

    Args:
        model: a model with the adapter attached (``lf.attach`` / ``lf.load_adapter``).
        out_dir: target folder (written atomically).
        name: which attached adapter.
        rank: SVD route only: the LoRA rank (default: the member's ``rank``).

    Raises:
        ValueError: unknown adapter name, a member that cannot be merged, or a bad rank.
    """
    from lorafam.core.checkpoint import save_adapter
    from lorafam.methods.lora import LoraConfig

    cfg, spec = _exportable(model, name)
    if spec.plain_lora:
        layers = [(p, layer) for p, layer in adapted_layers(model) if name in layer.adapters]
        save_adapter(model, out_dir, name)
        notes = []
        if spec.key == "longlora":
            notes.append(
                "LongLoRA: the trained embeddings and norms travel as modules_to_save (on a tied model the head "
                "too); PEFT reproduces the outputs (tested); runtimes that load only lora_A/lora_B drop them"
            )
            if getattr(cfg, "target_context", None) is not None:
                notes.append(
                    f"target_context={cfg.target_context}: set linear RoPE scaling (factor = ceil(target_context / "
                    "max_position_embeddings)) in the base model's config before loading elsewhere — the adapter "
                    "file cannot carry it (see lorafam_base_model_changes in adapter_config.json)"
                )
        return ExportReport(
            str(out_dir), spec.key, "copy", cfg.rank, float(cfg.alpha), len(layers), 0.0, notes=notes
        )
    factors = plain_factors(model, name, rank)
    r, alpha = factors.rank, factors.alpha
    state: dict[str, torch.Tensor] = {}
    for path, (a, b, _) in factors.layers.items():
        state[f"{PREFIX}{path}.lora_A.weight"] = a
        state[f"{PREFIX}{path}.lora_B.weight"] = b
    errors = factors.errors
    exact = factors.route == "exact"
    peft_cfg = file_config(model, name, LoraConfig(rank=r, alpha=alpha, targets=cfg.targets).to_peft())

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "lorafam_export_of": spec.key})
        (tmp / CONFIG_NAME).write_text(json.dumps(peft_cfg, indent=2, sort_keys=True) + "\n")

    atomic_write_dir(Path(out_dir), write)
    layers = list(factors.layers)
    notes = [] if exact else [f"SVD to rank {r}: max relative error {max(errors, default=0.0):.2e} over layers"]
    route = "exact" if exact else "svd"
    return ExportReport(str(out_dir), spec.key, route, r, alpha, len(layers), max(errors, default=0.0), notes)
