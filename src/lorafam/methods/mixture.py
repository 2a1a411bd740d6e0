"""MoPEFT-style mixture: several family members on each layer, weighted by a learned router.

"MoPEFT: A Mixture-of-PEFTs for the Segment Anything Model", Sahay & Savakis (RIT), arXiv 2405.00293 (CVPR 2024
Workshop on Foundation Models per arXiv; CVPRW 2025 proceedings) — https://arxiv.org/abs/2405.00293

Update rule (experts = any weight-update members, e.g. LoRA + DoRA + Quantum-PEFT, all on the same modules):

    h = W0 x + b + Σ_i g_i(x) · Δ_i(x),      g = topk(softmax(W_r u + b_r))      W_r (E, in), b_r (E,)

with Δ_i the i-th expert's ``delta_output`` and u = x_t per token (``router="token"``) or u = the mean of x over the
sequence's non-padding tokens (``router="sequence"``). With ``top_k`` only the k largest probabilities are kept
(not renormalised unless ``renormalize``, as in the Switch Transformer, so the router still gets a gradient at k=1).
Load balancing (Switch Transformer, Fedus et al. 2021, https://arxiv.org/abs/2101.03961, eq. 4): per layer
E · Σ_i f_i · P_i with f_i the fraction of routing units dispatched to expert i (top-k, or arg-max when dense) and P_i
the mean router probability; the mean over layers times ``balance_loss_weight`` is added by the trainer callback.

Sequence gates and the KV cache: a gate that is constant over a causal sequence cannot be causal (only token 0 is
visible everywhere), so the rule is: the gate is computed at a call whose KV cache is empty (the prompt, or the whole
sequence in training) from the mean over its non-padding tokens, and reused unchanged by every later call that
extends the cache (decoding). A model-level forward hook tells the layers which case they are in.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorafam.core.adapter import Adapter
from lorafam.core.config import AdapterConfig, Targets
from lorafam.helpers import unknown
from lorafam.methods.mixture_runtime import RoutingState, install_routing_hooks

_NOT_MERGEABLE = (
    "the router's gates depend on the input, so no single ΔW exists (merge or export one expert instead)"
)


@dataclass(kw_only=True)
class MixtureConfig(AdapterConfig):
    """A routed mixture of family members. ``rank``/``alpha``/``dropout`` are the defaults of experts given by name."""

    method: ClassVar[str] = "mixture"

    experts: list[Any] = field(default_factory=lambda: ["lora", "dora", "quantum"])
    """Member names ("dora"), dicts ({"member": "quantum", "layers": 2} or {"method": ...}) or member configs."""
    router: Literal["token", "sequence"] = "token"
    """Route each token, or each sequence (one gate per sequence, see the module docstring)."""
    top_k: int | None = None
    """Keep only the k largest gates per routing unit (None: all experts, dense softmax)."""
    renormalize: bool = False
    """With ``top_k``: rescale the kept gates to sum to 1 (Mixtral style) instead of keeping raw probabilities."""
    balance_loss_weight: float = 0.01
    """Weight of the Switch-style load-balancing loss the trainer adds (0 disables it)."""
    targets: Targets | None = None  # type: ignore[assignment]
    """Shared by every expert; None takes the experts' own (which must agree) or "all-linear"."""

    def __post_init__(self) -> None:
        if not isinstance(self.experts, (list, tuple)) or not self.experts:
            raise ValueError("MixtureConfig: 'experts' must be a non-empty list of member names, dicts or configs")
        self.targets = self._resolve_targets()
        super().__post_init__()
        if self.router not in ("token", "sequence"):
            raise ValueError(f"MixtureConfig: 'router' must be 'token' or 'sequence', got {self.router!r}")
        n = len(self.experts)
        if self.top_k is not None and (not isinstance(self.top_k, int) or not 1 <= self.top_k <= n):
            raise ValueError(f"MixtureConfig: 'top_k' must be None or an integer in [1, {n}], got {self.top_k!r}")
        if not self.balance_loss_weight >= 0:
            raise ValueError(
                f"MixtureConfig: 'balance_loss_weight' must be >= 0, got {self.balance_loss_weight!r}"
            )
        self.experts = [self._expert(i, e) for i, e in enumerate(self.experts)]

    def _resolve_targets(self) -> Targets:
        def norm(t: Any) -> Any:
            return sorted(t) if isinstance(t, (list, tuple)) else t

        own = [
            (i, e.targets if isinstance(e, AdapterConfig) else e["targets"])
            for i, e in enumerate(self.experts)
            if isinstance(e, AdapterConfig) or (isinstance(e, dict) and "targets" in e)
        ]
        if self.targets is not None:
            for i, t in own:
                if norm(t) != norm(self.targets):
                    raise ValueError(
                        f"MixtureConfig: experts[{i}].targets={t!r} differs from targets={self.targets!r}; all experts "
                        "of a mixture sit on the same modules (give experts by name or drop their own 'targets')"
                    )
            return self.targets
        for i, t in own[1:]:
            if norm(t) != norm(own[0][1]):
                raise ValueError(
                    f"MixtureConfig: experts[{own[0][0]}].targets={own[0][1]!r} and experts[{i}].targets={t!r} "
                    "differ; all experts of a mixture must target the same modules"
                )
        return own[0][1] if own else "all-linear"

    def _expert(self, i: int, e: Any) -> AdapterConfig:
        from lorafam.family import MEMBERS, METHODS

        shared = {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": self.targets}
        shared["exclude"] = list(self.exclude)
        where = f"MixtureConfig: experts[{i}]"
        if isinstance(e, str) or (isinstance(e, dict) and "member" in e):
            d = {"member": e} if isinstance(e, str) else dict(e)
            name = d.pop("member")
            if name not in MEMBERS:
                raise unknown("member", name, MEMBERS, where)
            cfg = MEMBERS[name].make_config(**{**shared, **d})
        elif isinstance(e, dict) and "method" in e:
            if e["method"] not in METHODS:
                raise unknown("method", e["method"], METHODS, where)
            cfg = METHODS[e["method"]].config_cls.from_dict({**shared, **e})
        elif isinstance(e, AdapterConfig):
            cfg = e
        else:
            raise ValueError(
                f"{where}: expected a member name, a dict with 'member' or 'method', or a config; got {e!r}"
            )
        if not METHODS[type(cfg).method].mixable:  # a registry fact (MethodSpec.mixable)
            ok = [m for m, s in MEMBERS.items() if METHODS[s.method].mixable]
            raise ValueError(
                f"{where}: {type(cfg).method!r} cannot be a mixture expert (it needs model-level hooks or trainer "
                f"callbacks of its own). Members that can: {ok}"
            )
        if cfg.quantize is not None:
            raise ValueError(f"{where}.quantize must be None; set 'quantize' on the mixture (the base is shared)")
        problem = cfg.mixture_problem()  # a declared hook (AdapterConfig), not a probe of the expert's fields
        if problem:
            raise ValueError(f"{where}: {problem}")
        return cfg

    def packing_problem(self) -> str | None:
        if self.router != "sequence":
            return None
        return (
            "router='sequence' pools each row into one gate vector, so the samples packed into a row would share "
            "one routing decision (use router='token', or packing: false)"
        )

    def to_peft(self) -> dict[str, Any]:
        return {
            "peft_type": self.peft_type,
            "experts": [type(e).method for e in self.experts],
            "router": self.router,
        }

    @classmethod
    def accepts_peft(cls, d: dict[str, Any]) -> bool:
        return d.get("peft_type") == cls.spec().peft_type


def _weakrefable(obj: Any) -> bool:
    if obj is None:
        return False
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


class MixtureAdapter(Adapter):
    """The mixture on one layer: child adapters in ``experts`` plus the router ``router_weight`` / ``router_bias``.

    Buffers ``gate_sum`` (E,) and ``gate_count`` (1,) accumulate the gates used in training (router statistics,
    saved with the adapter; see :func:`router_stats`).
    """

    mergeable: ClassVar[bool] = False
    not_mergeable_reason: ClassVar[str] = _NOT_MERGEABLE

    def __init__(self, config: MixtureConfig, in_features: int, out_features: int, rank: int, alpha: float):
        from lorafam.family import METHODS

        super().__init__(config, in_features, out_features, rank, alpha)
        self.experts = nn.ModuleList(
            METHODS[type(c).method].adapter_cls(c, in_features, out_features, c.rank, float(c.alpha))
            for c in config.experts
        )
        n = len(self.experts)
        # Switch Transformer §2.4: a small router init (scale 0.1 of the usual fan-in variance)
        self.router_weight = nn.Parameter(torch.randn(n, in_features) * math.sqrt(0.1 / in_features))  # (E, in)
        self.router_bias = nn.Parameter(torch.zeros(n))  # (E,)
        self.register_buffer("gate_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("gate_count", torch.zeros(1, dtype=torch.float64))
        self._routing: RoutingState | None = None
        # KV cache object → (probs, gates) (B, E) fixed for the sequence it holds, and the tokens routed so far;
        # weak keys: a finished generation's cache takes its entry with it. Sequences interleave safely.
        self._seqs: weakref.WeakKeyDictionary[Any, tuple[Tensor, Tensor, int]] = weakref.WeakKeyDictionary()
        self._aux: Tensor | None = None
        # detached gates of the last call (token router: (..., E); sequence router: (B, E))
        self.last_gates: Tensor | None = None
        self.window = torch.zeros(n + 1, dtype=torch.float64)  # gate sums + count since the last log line

    @classmethod
    def check_shape(cls, config: AdapterConfig, in_f: int, out_f: int, rank: int, path: str) -> None:
        from lorafam.family import METHODS

        for i, c in enumerate(config.experts):
            expert_cls = METHODS[type(c).method].adapter_cls
            try:
                expert_cls.check_shape(c, in_f, out_f, c.rank, path)
            except ValueError as exc:
                raise ValueError(f"MixtureConfig: experts[{i}]: {exc}") from exc

    def init_from_base(self, base: nn.Module) -> None:
        for ex in self.experts:
            ex.init_from_base(base)

    def param_roles(self) -> dict[str, str]:
        roles = {"router_weight": "gate", "router_bias": "gate"}
        for i, ex in enumerate(self.experts):
            roles.update({f"experts.{i}.{k}": r for k, r in ex.param_roles().items()})
        return roles

    def peft_state(self) -> dict[str, Tensor]:
        state = {"router.weight": self.router_weight, "router.bias": self.router_bias}
        state.update({"router_stats.gate_sum": self.gate_sum, "router_stats.gate_count": self.gate_count})
        for i, ex in enumerate(self.experts):
            state.update({f"experts.{i}.{k}": v for k, v in ex.peft_state().items()})
        return state

    def delta_weight(self, base: nn.Module) -> Tensor:
        raise NotImplementedError(f"MixtureAdapter has no single ΔW: {_NOT_MERGEABLE}")

    # -- routing -----------------------------------------------------------------------------------------------
    def _select(self, probs: Tensor) -> Tensor:
        k = self.config.top_k
        if k is None:
            return probs
        vals, idx = probs.topk(k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, idx, vals)
        return gates / gates.sum(-1, keepdim=True) if self.config.renormalize else gates

    def _route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(probs, gates): (..., E) per token, or (B, E) per sequence."""
        w, b = self.router_weight.float(), self.router_bias.float()
        if self.config.router == "token":
            probs = F.softmax(F.linear(x.float(), w, b), dim=-1)
            return probs, self._select(probs)
        st = self._routing
        if st is not None and st.phase == "cached":
            # the gates of the sequence this cache holds, computed when it started; only when this call continues
            # it exactly where the last one ended (anything else would route on another sequence's gates)
            entry = self._seqs.get(st.cache) if _weakrefable(st.cache) else None
            if entry is None or entry[2] != st.start:
                raise RuntimeError(
                    "sequence router: this call extends a KV cache that this mixture did not route from its "
                    "start, so its sequence gates are unknown; run the whole sequence from an empty cache"
                )
            probs, gates, _ = entry
            if probs.shape[0] != x.shape[0]:
                raise RuntimeError(
                    f"sequence router: the cached gates are for batch size {probs.shape[0]} but this decode "
                    f"step has {x.shape[0]} rows; start a new sequence (empty KV cache) to re-route"
                )
            self._seqs[st.cache] = (probs, gates, st.start + st.length)
            return probs, gates
        if x.dim() != 3:
            raise ValueError(f"router='sequence' needs inputs shaped (batch, seq, features), got {tuple(x.shape)}")
        mask = st.mask if st is not None else None
        if mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):
            m = mask.to(torch.float32)[..., None]  # (B, T, 1)
            pooled = (x.float() * m).sum(1) / m.sum(1).clamp_min(1.0)
        else:
            pooled = x.float().mean(1)  # (B, in)
        probs = F.softmax(F.linear(pooled, w, b), dim=-1)
        gates = self._select(probs)
        if st is not None and st.phase == "fresh":
            if st.cache is None:
                st.pending.append((self, probs.detach(), gates.detach(), st.length))
            else:
                self.remember_sequence(st.cache, probs.detach(), gates.detach(), st.start + st.length)
        return probs, gates

    def reuses_prefix(self) -> bool:
        """Token routing reads each token alone; sequence routing pools the whole call, so a prefix routed in
        another call would change the gates."""
        return self.config.router == "token"

    def remember_sequence(self, cache: Any, probs: Tensor, gates: Tensor, end: int) -> None:
        """Keep a sequence's gates for the calls that continue ``cache`` (from token ``end`` on)."""
        if _weakrefable(cache):
            self._seqs[cache] = (probs, gates, end)

    def delta_output(self, x: Tensor, base_out: Tensor, base: nn.Module) -> Tensor:
        probs, gates = self._route(x)
        self.last_gates = gates.detach()
        out: Tensor | None = None
        for i, ex in enumerate(self.experts):
            g = gates[..., i]
            if self.config.top_k is not None and not bool(g.any()):
                continue  # no unit was routed here: skip the expert's compute
            g = g[..., None] if self.config.router == "token" else g.view(-1, *([1] * (x.dim() - 1)))
            d = ex.delta_output(x, base_out, base)
            out = g.to(d.dtype) * d if out is None else out + g.to(d.dtype) * d
        if self.training and torch.is_grad_enabled():  # a training forward (not eval / generation)
            self._bookkeep(probs, gates, x)
        return torch.zeros_like(base_out) if out is None else out.to(base_out.dtype)

    def _bookkeep(self, probs: Tensor, gates: Tensor, x: Tensor) -> None:
        """Switch balance term for this layer, and the running gate statistics."""
        n = probs.shape[-1]
        p, g = probs.reshape(-1, n), gates.reshape(-1, n)
        st = self._routing
        mask = st.mask if st is not None and self.config.router == "token" else None
        if mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):
            keep = mask.reshape(-1).bool()
            p, g = p[keep], g[keep]
        k = self.config.top_k or 1
        chosen = F.one_hot(p.topk(k, dim=-1).indices, n).sum(-2).to(p.dtype)  # (U, E)
        frac = chosen.mean(0) / k  # f_i
        self._aux = n * (frac.detach() * p.mean(0)).sum()
        with torch.no_grad():
            sums = g.double().sum(0).to(self.gate_sum.device)
            self.gate_sum += sums
            self.gate_count += g.shape[0]
            self.window[:n] += sums.cpu()
            self.window[n] += g.shape[0]

    # -- model-level wiring ------------------------------------------------------------------------------------
    @classmethod
    def on_attach(cls, model: nn.Module, config: AdapterConfig, name: str) -> None:
        mixes = mixtures(model, name)
        state = RoutingState()
        by_cls: dict[type, list[Adapter]] = {}
        for _, ad in mixes:
            ad._routing = state
            for ex in ad.experts:
                by_cls.setdefault(type(ex), []).append(ex)
        for expert_cls, children in by_cls.items():
            expert_cls.share(children)  # e.g. Quantum-PEFT's batched circuits

        install_routing_hooks(model, name, state)

    @classmethod
    def on_detach(cls, model: nn.Module, config: AdapterConfig, name: str) -> None:
        for _, ad in mixtures(model, name):
            ad._routing = None
            ad._seqs.clear()


def mixtures(model: nn.Module, name: str) -> list[tuple[str, Any]]:
    """(module path, MixtureAdapter) for every layer carrying mixture adapter ``name``."""
    from lorafam.core.inject import adapted_layers

    return [
        (path, ad) for path, layer in adapted_layers(model) for k, ad in layer.adapters.items() if k == name
        if isinstance(ad, MixtureAdapter)
    ]  # fmt: skip


def router_stats(model: nn.Module, name: str = "default") -> dict[str, list[float]]:
    """Module path → mean gate per expert over all training tokens (or sequences) seen so far (saved, reloadable)."""
    return {
        path: (ad.gate_sum / ad.gate_count.clamp_min(1)).tolist() for path, ad in mixtures(model, name)
    }  # fmt: skip
