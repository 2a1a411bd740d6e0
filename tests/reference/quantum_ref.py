"""Quantum-PEFT written naively with dense matrices and explicit Kronecker products (no code shared with src/).

Quantum-PEFT (Koike-Akino et al., ICLR 2025, arXiv 2503.05431): ΔW = s · U diag(λ) Vᵀ, where U, V are the first K
columns of orthogonal matrices produced by a circuit of RY rotations and CZ entanglers on q = ⌈log2 N⌉ qubits.

Gate order (lorafam's reading, see docs/quantum-peft.md): RY on every qubit, then L times, for j = 0 … q−2:
CZ(j, j+1), RY on qubit j, RY on qubit j+1. Qubit j is bit j of the coordinate index (bit 0 = least significant).
For N < 2^q every gate G is *masked* to the leading N coordinates: a row/column pair it couples is kept only when
every coordinate it couples is < N; otherwise that coordinate sees the identity.
"""

from __future__ import annotations

import math

import torch


def ry(theta: float | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(theta, dtype=torch.float64)
    c, s = torch.cos(t / 2), torch.sin(t / 2)
    return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])


def lift(q: int, gates: dict[int, torch.Tensor]) -> torch.Tensor:
    """⊗ over qubits q−1 … 0 (most significant first) of gates[j] or the 2×2 identity."""
    out = torch.ones(1, 1, dtype=torch.float64)
    for j in reversed(range(q)):
        out = torch.kron(out, gates.get(j, torch.eye(2, dtype=torch.float64)))
    return out


def cz(q: int, j: int) -> torch.Tensor:
    d = [(-1.0 if (i >> j) & 1 and (i >> (j + 1)) & 1 else 1.0) for i in range(2**q)]
    return torch.diag(torch.tensor(d, dtype=torch.float64))


def circuit_matrix(n: int, layers: int, theta: torch.Tensor) -> torch.Tensor:
    """The dense n×n orthogonal matrix of the (masked) circuit."""
    q = max(1, math.ceil(math.log2(n)))
    theta = theta.double()
    seq: list[tuple[torch.Tensor, torch.Tensor]] = []  # (gate, structure used to find couplings)
    ones = torch.ones(2, 2, dtype=torch.float64)
    i = 0
    for j in range(q):
        seq.append((lift(q, {j: ry(theta[i])}), lift(q, {j: ones})))
        i += 1
    for _ in range(layers):
        for j in range(q - 1):
            seq.append((cz(q, j), torch.eye(2**q, dtype=torch.float64)))
            seq.append((lift(q, {j: ry(theta[i])}), lift(q, {j: ones})))
            seq.append((lift(q, {j + 1: ry(theta[i + 1])}), lift(q, {j + 1: ones})))
            i += 2
    assert i == theta.numel(), (i, theta.numel())
    total = torch.eye(n, dtype=torch.float64)
    for gate, structure in seq:
        total = _masked_gate(gate, structure, n) @ total
    return total


def _masked_gate(gate: torch.Tensor, structure: torch.Tensor, n: int) -> torch.Tensor:
    """The leading n×n block of ``gate``; a coordinate the gate couples (structurally) to one >= n gets identity."""
    out = gate[:n, :n].clone()
    for a in range(n):
        if structure[a, n:].abs().sum() > 0 or structure[n:, a].abs().sum() > 0:
            out[a, :] = 0
            out[:, a] = 0
            out[a, a] = 1
    return out


def n_params(n: int, layers: int) -> int:
    """Angles of one unitary as counted gate by gate (one per RY)."""
    q = max(1, math.ceil(math.log2(n)))
    return q + layers * 2 * (q - 1)


def quantum_delta(theta_u, theta_v, lam, out_f, in_f, layers, alpha, k):
    """ΔW = (α/K) · U diag(λ) Vᵀ with U, V the first K columns of the dense circuit matrices."""
    u = circuit_matrix(out_f, layers, theta_u)[:, :k]
    v = circuit_matrix(in_f, layers, theta_v)[:, :k]
    return (alpha / k) * u @ torch.diag(lam.double()) @ v.T
