"""The mixture's trainer callback (named by the registry: ``MethodSpec.callbacks`` of ``mixture``).

Adds the Switch-style load-balancing loss the layers computed in the forward (``lorafam.methods.mixture``) and logs
the mean gate per expert, overall and per transformer block.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from lorafam.methods.mixture import mixtures
from lorafam.train.callbacks import Callback


class MixtureCallback(Callback):
    """Adds the balance loss and logs the mean gate per expert (overall and per transformer block)."""

    def __init__(self, model: nn.Module, config: Any, name: str = "default", total_steps: int = 0):
        self.name = f"mixture:{name}"
        self.adapter_name = name
        self.weight = float(config.balance_loss_weight)
        self.labels = [f"e{i}_{type(c).method}" for i, c in enumerate(config.experts)]
        self.mixes = mixtures(model, name)
        self.last_balance = float("nan")

    def extra_loss(self, model: nn.Module) -> Tensor | None:
        terms = [ad._aux for _, ad in self.mixes if ad._aux is not None]
        for _, ad in self.mixes:
            ad._aux = None
        if not terms:
            return None
        balance = torch.stack(terms).mean()
        self.last_balance = float(balance.detach())
        return self.weight * balance if self.weight > 0 else None

    def logs(self) -> dict[str, float]:
        out: dict[str, float] = {f"router/{self.adapter_name}/balance": self.last_balance}
        n = len(self.labels)
        total = torch.zeros(n + 1, dtype=torch.float64)
        blocks: dict[str, Tensor] = {}
        for path, ad in self.mixes:
            total += ad.window
            m = re.search(r"\.(\d+)\.", f".{path}.")
            key = f"L{int(m.group(1)):02d}" if m else path
            blocks[key] = blocks.get(key, torch.zeros(n + 1, dtype=torch.float64)) + ad.window
            ad.window.zero_()
        if total[n] == 0:
            return out
        for i, label in enumerate(self.labels):
            out[f"router/{self.adapter_name}/{label}"] = float(total[i] / total[n])
        for key, w in sorted(blocks.items()):
            for i in range(n):
                out[f"router/{self.adapter_name}/{key}/e{i}"] = float(w[i] / w[n].clamp_min(1))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"last_balance": self.last_balance}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_balance = float(state.get("last_balance", float("nan")))
