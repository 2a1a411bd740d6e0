"""The grouped mixed-adapter term: each row gets exactly its own adapter's low-rank term (DoRA's g, c included)."""

from __future__ import annotations

import pytest
import torch

from lorafam.serve.lowrank import LowRank
from lorafam.serve.mixing import AdapterSet, Grouped, Mixed
from lorafam.serve.requests import ServedAdapter


def _adapter(name: str, rank: int, n_in: int, n_out: int, dora: bool, seed: int) -> ServedAdapter:
    g = torch.Generator().manual_seed(seed)
    lr = LowRank(torch.randn(n_in, rank, generator=g), torch.randn(rank, n_out, generator=g))
    if dora:
        lr.g = torch.rand(n_out, generator=g) + 0.5
        lr.c = torch.randn(n_out, generator=g)
    rec = ServedAdapter(name=name, path="", method="dora" if dora else "lora", rank=rank, config=None)
    rec.layers = {"layer": lr}
    return rec


@pytest.mark.parametrize(
    "row_adapter",
    [[0, 1, 2, 3], [0, 0, 1, 2], [2, 0, -1, 1, 0, 3, -1], [3, 3, 3, 1], [-1, 1, -1]],
    ids=["in-order", "in-order-shared", "scattered-with-base-rows", "permuted", "sparse"],
)
def test_each_row_gets_its_own_adapters_term(row_adapter: list[int]) -> None:
    n_in, n_out = 12, 10
    recs = [_adapter(f"a{k}", r, n_in, n_out, dora=k == 2, seed=k) for k, r in enumerate([2, 5, 3, 8])]
    x = torch.randn(len(row_adapter), 1, n_in)
    base = torch.randn(len(row_adapter), 1, n_out)
    want = base.clone()
    for i, k in enumerate(row_adapter):
        if k >= 0:
            lr = recs[k].layers["layer"]
            o = want[i, 0] * lr.g + lr.c if lr.g is not None else want[i, 0]
            want[i, 0] = o + (x[i, 0] @ lr.a_t) @ lr.sb_t
    out = base.clone()
    term = Grouped(recs, row_adapter, torch.device("cpu"), torch.float32)
    assert term.in_place == (min(row_adapter) >= 0 and row_adapter == sorted(row_adapter))
    term.apply("layer", x, out)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    concat = base.clone()  # the concatenated kernel (EngineConfig.mixed_kernel="concat") gives the same terms
    Mixed(AdapterSet(recs, torch.device("cpu"), torch.float32), torch.tensor(row_adapter), torch.float32).apply(
        "layer", x, concat
    )
    torch.testing.assert_close(concat, want, rtol=1e-5, atol=1e-5)
    other = base.clone()
    term.apply("another-layer", x, other)  # no adapter there: untouched
    assert torch.equal(other, base)
