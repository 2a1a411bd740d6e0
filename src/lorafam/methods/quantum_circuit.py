"""The Pauli-rotation circuit behind Quantum-PEFT (see ``lorafam.methods.quantum``), evaluated without N×N matrices.

Gate order (our reading of Koike-Akino et al., ICLR 2025, arXiv 2503.05431 — see docs/quantum-peft.md): an RY on
every qubit, then L times, for j = 0 … q−2: CZ(j, j+1), RY on qubit j, RY on qubit j+1. Qubit j is bit j of the
coordinate index. For N < 2^q every gate is masked to the leading N coordinates (a rotation acts on a pair only
when both coordinates are < N), which keeps [0, N) invariant and the N×K result exactly orthonormal.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


def n_qubits(n: int) -> int:
    """q = ⌈log2 n⌉ (n ≥ 2)."""
    return max(1, math.ceil(math.log2(n)))


def n_angles(n: int, layers: int) -> int:
    """Angles of one n-dimensional unitary with ``layers`` entangling layers: (2L+1)·⌈log2 n⌉ − 2L."""
    q = n_qubits(n)
    return (2 * layers + 1) * q - 2 * layers


# ---------------------------------------------------------------------------------------------------------------
class PauliCircuit(nn.Module):
    """The first K columns of the circuit's orthogonal matrix, restricted to the leading N coordinates.

    Holds only index buffers (non-persistent); the angles are passed in, so the owning adapter keeps its
    parameters as its own attributes.

    Evaluation of the first ladder is factorised (exact; an implementation detail tested against dense matrices).
    Split the qubits at s = max(⌈log2 K⌉, 1): the start columns e_0…e_{K−1} live on qubits < s, so after the first
    RY layer the state is χ (qubits < s, 2^s × K) ⊗ h0 (qubits ≥ s, one vector shared by all columns). Ladder blocks
    j < s−1 touch only χ; blocks j ≥ s−1 touch only qubits ≥ s−1, so they form a small (2^(q−s+1))-dim "register"
    circuit that is applied to h0 ⊗ I₂ (two columns) and then contracted with χ in one batched matmul. Masks (for
    N < 2^q) only involve qubits ≥ p where N = m·2^p, m odd, so this needs s ≤ p; otherwise (and for ladders 2…L)
    the gates are applied one by one to the full 2^q × K state.

    Args:
        n: the ambient dimension N (≥ 2).
        k: the number of columns K (≤ N).
        layers: L ≥ 1.
    """

    def __init__(self, n: int, k: int, layers: int):
        super().__init__()
        self.n, self.k, self.layers = n, k, layers
        self.q = q = n_qubits(n)
        p = (n & -n).bit_length() - 1  # N = m·2^p with m odd (p = q when N is a power of two)
        split = max(math.ceil(math.log2(k)) if k > 1 else 0, 1)
        self.split = split if split <= p else None  # None: no factorisation, dense from the start
        low = split if self.split is not None else q
        start = torch.zeros(2**low, k)
        start[torch.arange(k), torch.arange(k)] = 1.0
        self.register_buffer("start", start, persistent=False)  # e_0 … e_{K-1}   (2^low, K)
        self._masks: dict[tuple[str, int, bool], str] = {}
        for j in range(q):
            for cz in (False, True):
                self._add_mask("full", j, cz, n, q)
                if self.split is not None and j >= split:  # initial layer on qubits >= s (register of h0)
                    self._add_mask("high", j - split, cz, n >> split, q - split)
                if self.split is not None and j >= split - 1:  # ladder blocks on qubits >= s - 1
                    self._add_mask("reg", j - split + 1, cz, n >> (split - 1), q - split + 1)

    def _add_mask(self, reg: str, j: int, cz: bool, valid: int, width: int) -> None:
        """1.0 where the pair (i, i + 2^j) (bit j of i clear) lies inside [0, valid); None when all pairs do."""
        if (cz and j + 1 >= width) or j >= width:
            return
        idx = torch.arange(2**width).view(-1, 2 if cz else 1, 2, 2**j)[:, :, 0]  # (A, 2?, B): bit-j-clear members
        active = (idx + 2**j < valid).float()
        if bool(active.all()):
            return
        name = f"mask_{reg}_{j}_{int(cz)}"
        self.register_buffer(name, active[None, :, :, :, None], persistent=False)  # (1, A, 2?, B, 1)
        self._masks[(reg, j, cz)] = name

    def _mask(self, reg: str, j: int, cz: bool) -> Tensor | None:
        name = self._masks.get((reg, j, cz))
        return None if name is None else getattr(self, name)

    def _ladder(self, x: Tensor, cos: Tensor, sin: Tensor, first: int, base: int, reg: str, offset: int) -> Tensor:
        """Blocks j = first … q−2 of one ladder (angles from ``base``) on a state whose qubit 0 is qubit ``offset``."""
        for j in range(first, self.q - 1):
            a, t = base + 2 * j, j - offset
            x = _ry(x, t, cos[:, a], sin[:, a], True, self._mask(reg, t, True))  # CZ(j, j+1) then RY on j
            x = _ry(x, t + 1, cos[:, a + 1], sin[:, a + 1], False, self._mask(reg, t + 1, False))
        return x

    def forward(self, theta: Tensor) -> Tensor:
        """theta (G, n_angles) → G matrices U (G, N, K) with orthonormal columns (float32)."""
        q, g, s = self.q, theta.shape[0], self.split
        theta = theta.float()
        cos, sin = torch.cos(theta / 2), torch.sin(theta / 2)  # (G, P)
        x = self.start.expand(g, *self.start.shape)
        if s is None:  # dense: RY layer, then every ladder, gate by gate on (G, 2^q, K)
            for j in range(q):
                x = _ry(x, j, cos[:, j], sin[:, j], False, self._mask("full", j, False))
            first_dense = 0
        else:
            for j in range(s):  # RY layer on χ's qubits (never masked: s <= p)
                x = _ry(x, j, cos[:, j], sin[:, j], False, None)
            x = self._ladder_until(x, cos, sin, s - 1)  # blocks j < s − 1 act on χ only
            high = torch.zeros(g, 2 ** (q - s), 1, device=x.device)
            high[:, 0] = 1.0
            for t in range(q - s):  # RY layer on qubits >= s, applied to |0>
                high = _ry(high, t, cos[:, s + t], sin[:, s + t], False, self._mask("high", t, False))
            eye2 = torch.eye(2, device=x.device)
            reg = (high[:, :, None, :] * eye2[None, None, :, :]).reshape(g, -1, 2)  # h0 ⊗ I₂  (G, 2^(q-s+1), 2)
            reg = self._ladder(reg, cos, sin, s - 1, q, "reg", s - 1)
            chi = x.reshape(g, 2, -1)  # (G, 2, 2^(s-1)·K): split off qubit s − 1
            x = torch.bmm(reg, chi).reshape(g, 2**q, self.k)
            first_dense = 1
        for layer in range(first_dense, self.layers):
            x = self._ladder(x, cos, sin, 0, q + layer * 2 * (q - 1), "full", 0)
        return x[:, : self.n]

    def _ladder_until(self, x: Tensor, cos: Tensor, sin: Tensor, stop: int) -> Tensor:
        for j in range(stop):
            x = _ry(x, j, cos[:, self.q + 2 * j], sin[:, self.q + 2 * j], True, None)
            x = _ry(x, j + 1, cos[:, self.q + 2 * j + 1], sin[:, self.q + 2 * j + 1], False, None)
        return x


def _ry(x: Tensor, j: int, c: Tensor, s: Tensor, cz: bool, mask: Tensor | None) -> Tensor:
    """RY(θ) on qubit j of a state x (G, 2^w, K), masked to active pairs; with ``cz``, CZ(j, j+1) first.

    On a pair (x0, x1) (bit j = 0 / 1): y0 = c·x0 − s·σ·x1, y1 = s·x0 + c·σ·x1 with σ = −1 where bit j+1 is set
    (the CZ sign) and 1 otherwise; an inactive pair keeps (x0, x1) (c → 1, s → 0), its bit-1 member being 0.
    """
    g, k = x.shape[0], x.shape[-1]
    v = x.reshape(g, -1, 2 if cz else 1, 2, 2**j, k)  # (G, A, bit j+1?, bit j, B, K)
    x0, x1 = v[:, :, :, 0], v[:, :, :, 1]  # (G, A, 2?, B, K)
    c = c.view(g, 1, 1, 1, 1)
    s = s.view(g, 1, 1, 1, 1)
    if mask is not None:
        c = 1 + mask * (c - 1)
        s = mask * s
    if cz:
        sigma = torch.tensor([1.0, -1.0], device=x.device).view(1, 1, 2, 1, 1)
        y0 = c * x0 - (s * sigma) * x1
        y1 = s * x0 + (c * sigma) * x1
    else:
        y0 = c * x0 - s * x1
        y1 = s * x0 + c * x1
    return torch.stack((y0, y1), dim=3).reshape(x.shape)


class CircuitBank:
    """Evaluates the U / V circuits of many Quantum-PEFT adapters in a few batched calls (one per shape).

    One circuit call per adapter would cost hundreds of small kernels each; batching all same-shaped unitaries of a
    model makes the per-step cost a handful of calls. Results are cached until (a) the calling adapter's angles
    change (optimizer step, load), (b) the grad mode changes, or (c) a backward pass has consumed the graph of
    the batched result (a tensor hook clears the cache, so gradient accumulation recomputes per forward).
    """

    def __init__(self, adapters: list[Any]):
        self.groups: dict[tuple[Any, ...], list[tuple[Any, str]]] = {}
        for ad in adapters:
            for side, circuit in (("u", ad.circuit_u), ("v", ad.circuit_v)):
                key = (circuit.n, circuit.k, circuit.layers)
                self.groups.setdefault(key, []).append((ad, side))
        self._results: dict[int, dict[str, Tensor]] = {}
        self._keys: dict[int, tuple[Any, ...]] = {}

    def clear(self, *_: Any) -> None:
        self._results = {}
        self._keys = {}

    @staticmethod
    def _key(ad: Any) -> tuple[Any, ...]:
        return (torch.is_grad_enabled(), ad.theta_u._version, ad.theta_v._version, ad.theta_u.device)

    def factors(self, ad: Any) -> tuple[Tensor, Tensor]:
        got = self._results.get(id(ad))
        if got is None or self._keys.get(id(ad)) != self._key(ad):
            self._compute()
            got = self._results[id(ad)]
        return got["u"], got["v"]

    def _compute(self) -> None:
        self.clear()
        results: dict[int, dict[str, Tensor]] = {}
        for members in self.groups.values():
            by_device: dict[torch.device, list[tuple[Any, str]]] = {}
            for ad, side in members:
                by_device.setdefault(ad.theta_u.device, []).append((ad, side))
            for group in by_device.values():
                ad0, side0 = group[0]
                circuit = ad0.circuit_u if side0 == "u" else ad0.circuit_v
                theta = torch.stack([ad.theta_u if side == "u" else ad.theta_v for ad, side in group])
                out = circuit(theta)  # (G, N, K)
                if out.requires_grad:
                    out.register_hook(self.clear)
                # unbind, not out[i]: one backward node that stacks the G gradients (indexing would add G full-size
                # zero tensors in backward)
                for (ad, side), part in zip(group, out.unbind(0)):
                    results.setdefault(id(ad), {})[side] = part
        self._results = results
        self._keys = {id(ad): self._key(ad) for members in self.groups.values() for ad, _ in members}
