"""Shared fixtures: deterministic seeds, tiny models, a perturbation helper, the real-model fixture."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*register_constant.*")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def perturb_adapters(model: torch.nn.Module, std: float = 0.05, seed: int = 1) -> None:
    """Give every adapter parameter a non-identity value (default inits are no-ops by design)."""
    import lorafam as lf

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p, role, _ in lf.core.inject.named_adapter_params(model):
            noise = torch.randn(p.shape, generator=g) * std
            if role == "magnitude":
                p.mul_(1 + noise.to(p.dtype))
            else:
                p.add_(noise.to(p.dtype))


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded default model (converted once per machine)."""
    import lorafam as lf

    return lf.load_model(), lf.load_tokenizer()
