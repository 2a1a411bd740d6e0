"""Key/value storage for the batched engine: per-row slots for running requests, and a shared prefix-block cache.

:class:`SlotKV` holds one (slots, kv_heads, capacity, head_dim) key and value buffer per layer. A running request
owns one slot; its tokens' K/V sit at positions 0 … len−1 of it. A forward over some rows (:class:`SlotView`, given
to the transformers model as its cache) writes the new K/V at each row's own next positions and hands attention
the buffer up to the longest row, with a boolean mask (:func:`attention_mask`) that hides each shorter row's unused
tail and keeps causality. So rows of different lengths decode together without padding their caches to each other
or copying them per step. Finished rows free their slot; the last slot moves into the gap (one copy of one row) so
the running rows always fill slots 0 … n−1.

:class:`PrefixBlocks` is the shared prefix cache: K/V of ``block`` consecutive tokens, keyed by a namespace and the
hash chain of every token up to the end of the block (vLLM's automatic prefix caching scheme). The base model and
aLoRA adapters (before their invocation) share the ``"base"`` namespace — their K/V are the base model's there;
every other adapter has its own. Blocks are copied into a row's slot when reused and are never modified.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

ATTN_NAME = "lorafam_slots"


class SlotKV:
    """Per-layer K/V buffers for up to ``slots`` rows; grows (doubling) as rows or lengths need."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.slots = 0
        self.capacity = 0
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.lengths: list[int] = []

    def _alloc(self, slots: int, capacity: int) -> None:
        shape = (slots, self.kv_heads, capacity, self.head_dim)
        new_k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        new_v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        n = min(len(self.lengths), self.slots)
        top = min(max(self.lengths, default=0), self.capacity)
        if n and top:
            for layer in range(self.layers):
                new_k[layer][:n, :, :top] = self.keys[layer][:n, :, :top]
                new_v[layer][:n, :, :top] = self.values[layer][:n, :, :top]
        self.keys, self.values = new_k, new_v
        self.slots, self.capacity = slots, capacity

    def reserve(self, rows: int, length: int) -> None:
        """Make room for ``rows`` rows of up to ``length`` tokens."""
        if rows <= self.slots and length <= self.capacity:
            return
        slots = max(self.slots, 1)
        while slots < rows:
            slots *= 2
        cap = max(self.capacity, 64)
        while cap < length:
            cap *= 2
        self._alloc(slots, cap)

    def add_row(self) -> int:
        self.lengths.append(0)
        self.reserve(len(self.lengths), 1)
        return len(self.lengths) - 1

    def remove_row(self, slot: int) -> int | None:
        """Free ``slot``; the last row moves into it. Returns the old slot index of the moved row (or None)."""
        last = len(self.lengths) - 1
        moved = None
        if slot != last:
            n = self.lengths[last]
            for layer in range(self.layers):
                self.keys[layer][slot, :, :n] = self.keys[layer][last, :, :n]
                self.values[layer][slot, :, :n] = self.values[layer][last, :, :n]
            self.lengths[slot] = n
            moved = last
        self.lengths.pop()
        return moved

    def write_prefix(
        self, slot: int, blocks: list[tuple[tuple[Tensor, ...], tuple[Tensor, ...]]], size: int
    ) -> None:
        """Copy reused prefix blocks (per-layer (kv_heads, size, head_dim) tensors) into ``slot``."""
        total = len(blocks) * size
        self.reserve(len(self.lengths), total + 1)
        for i, (ks, vs) in enumerate(blocks):
            for layer in range(self.layers):
                self.keys[layer][slot, :, i * size : (i + 1) * size] = ks[layer]
                self.values[layer][slot, :, i * size : (i + 1) * size] = vs[layer]
        self.lengths[slot] = total

    def read_block(self, slot: int, start: int, size: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """A copy of ``size`` tokens of ``slot`` from ``start``, per layer (for the prefix cache)."""
        ks = tuple(self.keys[layer][slot, :, start : start + size].clone() for layer in range(self.layers))
        vs = tuple(self.values[layer][slot, :, start : start + size].clone() for layer in range(self.layers))
        return ks, vs

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def shrink(self) -> None:
        """Free the buffers when no row is running."""
        if not self.lengths:
            self.keys, self.values, self.slots, self.capacity = [], [], 0, 0


class SlotView:
    """The cache object one forward sees: rows ``first … first+n−1`` of a :class:`SlotKV`, ``q`` new tokens each.

    Duck-types the parts of ``transformers.Cache`` that decoder layers use (``update``, ``get_seq_length``). The
    lengths are committed by :meth:`commit` after the forward.
    """

    is_compileable = False

    def __init__(self, kv: SlotKV, first: int, n: int, q: int):
        self.kv, self.first, self.n, self.q = kv, first, n, q
        self.lens = kv.lengths[first : first + n]
        top = max(self.lens) + q
        kv.reserve(len(kv.lengths), top)
        self.top = top
        dev = kv.device
        if q == 1:
            self.rows = torch.arange(first, first + n, device=dev)
            self.pos = torch.tensor(self.lens, device=dev)

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        kb, vb = self.kv.keys[layer_idx], self.kv.values[layer_idx]
        if self.q == 1:
            kb[self.rows, :, self.pos] = key_states[:, :, 0]
            vb[self.rows, :, self.pos] = value_states[:, :, 0]
        else:
            for i in range(self.n):
                s, start = self.first + i, self.lens[i]
                kb[s, :, start : start + self.q] = key_states[i]
                vb[s, :, start : start + self.q] = value_states[i]
        return kb[self.first : self.first + self.n, :, : self.top], vb[
            self.first : self.first + self.n, :, : self.top
        ]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return min(self.lens)

    def commit(self) -> None:
        for i in range(self.n):
            self.kv.lengths[self.first + i] = self.lens[i] + self.q

    def positions(self) -> Tensor:
        """(n, q) absolute positions of the new tokens."""
        base = torch.tensor(self.lens, device=self.kv.device)[:, None]
        return base + torch.arange(self.q, device=self.kv.device)[None, :]

    def mask(self) -> Tensor:
        """(n, 1, q, top) boolean: key j is visible to new token i of row r iff j <= len_r + i."""
        keys = torch.arange(self.top, device=self.kv.device)
        return (keys[None, None, :] <= self.positions()[:, :, None])[:, None]


def attention_mask(view: SlotView) -> Tensor:
    return view.mask()


def slot_attention(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """SDPA on the slot buffers with the per-row mask; grouped-query heads natively (no repeated K/V)."""
    gqa = key.shape[1] != query.shape[1]
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=0.0, scale=scaling, enable_gqa=gqa
    )
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTN_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_NAME, slot_attention)
        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


# ---------------------------------------------------------------------------------------------------------------
class PrefixBlocks:
    """The shared prefix cache: LRU of K/V blocks keyed by (namespace, hash chain of the tokens up to the block)."""

    def __init__(self, block: int = 16, capacity_tokens: int = 8192):
        if block < 1:
            raise ValueError(f"prefix cache block must be >= 1 token, got {block}")
        self.block = block
        self.capacity = max(0, capacity_tokens // block)
        self.entries: OrderedDict[tuple[str, int], tuple[tuple[int, ...], Any]] = OrderedDict()
        self.hits = 0
        self.writes = 0
        self.evictions = 0

    def _keys(
        self, namespace: str, ids: list[int], n_blocks: int
    ) -> list[tuple[tuple[str, int], tuple[int, ...]]]:
        out = []
        h = hash(namespace)
        for i in range(n_blocks):
            toks = tuple(ids[i * self.block : (i + 1) * self.block])
            h = hash((h, toks))
            out.append(((namespace, h), toks))
        return out

    def lookup(self, namespace: str, ids: list[int], limit: int) -> list[Any]:
        """The cached blocks covering the longest run of ``ids[:limit]`` from the start (whole blocks only)."""
        found = []
        for key, toks in self._keys(namespace, ids, limit // self.block):
            entry = self.entries.get(key)
            if entry is None or entry[0] != toks:
                break
            self.entries.move_to_end(key)
            found.append(entry[1])
        self.hits += len(found)
        return found

    def insert(self, namespace: str, ids: list[int], limit: int, read: Any) -> int:
        """Store the whole blocks of ``ids[:limit]`` not cached yet; ``read(start)`` copies a block. Returns count."""
        if self.capacity == 0:
            return 0
        added = 0
        for i, (key, toks) in enumerate(self._keys(namespace, ids, limit // self.block)):
            if key in self.entries and self.entries[key][0] == toks:
                self.entries.move_to_end(key)
                continue
            self.entries[key] = (toks, read(i * self.block))
            added += 1
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
                self.evictions += 1
        self.writes += added
        return added

    def drop_namespace(self, namespace: str) -> None:
        for key in [k for k in self.entries if k[0] == namespace]:
            del self.entries[key]

    def __len__(self) -> int:
        return len(self.entries)
