"""What the engine does with rows: forwards with the adapters' terms, prefill on reused prefix blocks, one batched
decode step, solo rows (the mixture), sampling, streamed text with stop strings, and finishing (cache write-back).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lorafam.serve.kv import ATTN_NAME, SlotView
from lorafam.serve.mixing import AdapterSet, Group, Grouped, Mixed, pick_token
from lorafam.serve.requests import GenRequest, Row


class RowOps:
    """Mixed into :class:`lorafam.serve.batching.Engine` (which sets the attributes used here)."""

    # --- forward helpers -----------------------------------------------------------------------------------------
    def _make_hook(self, path: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
            groups = self._groups
            if not groups:
                return None
            x = args[0]
            for g in groups:
                g.apply(path, x, out)
            return out

        return hook

    def _forward(self, ids: Tensor, view: SlotView, groups: list[Group], all_logits: bool) -> Tensor:
        from lorafam.core.inject import adapted_layers

        cfg = self.model.config
        previous = cfg._attn_implementation
        cfg._attn_implementation = ATTN_NAME
        self._groups = groups
        solo_layers = [layer for _, layer in adapted_layers(self.model)] if self._solo_attached() else []
        saved = [layer.active for layer in solo_layers]
        for layer in solo_layers:
            layer.active = []
        try:
            kwargs: dict[str, Any] = {} if all_logits else {"logits_to_keep": 1}
            out = self.model(
                input_ids=ids.to(self.device),
                position_ids=view.positions(),
                attention_mask=view.mask(),
                cache=view,
                use_cache=True,
                **kwargs,
            )
        finally:
            self._groups = None
            cfg._attn_implementation = previous
            for layer, a in zip(solo_layers, saved):
                layer.active = a
        view.commit()
        return out.logits

    def _solo_attached(self) -> bool:
        return any(a.solo for a in self.adapters.values())

    def _row_group(self, row: Row, rows: Tensor | None, tok: int) -> Group | None:
        rec = row.adapter
        if rec is None or rec is self._merged:
            return None
        if rec.invocation is not None and row.start is None:
            return None  # an aLoRA row without its invocation is the base model
        return Group(rec.layers, rows, tok)

    # --- prefill -------------------------------------------------------------------------------------------------
    def _namespace(self, row: Row) -> tuple[str, int, bool]:
        """(namespace, reusable limit, may write) for a row's prompt."""
        rec, n = row.adapter, len(row.ids)
        if rec is None:
            return "base", n - 1, True
        if rec.invocation is not None:
            from lorafam.methods.alora import last_occurrence

            start = int(last_occurrence(torch.tensor([row.ids]), torch.tensor(rec.invocation))[0])
            row.start = start if start >= 0 else None
            return "base", min(n - 1, start) if start >= 0 else n - 1, False  # aLoRA never writes the cache
        return rec.namespace, n - 1, True

    def _prefill(self, row: Row) -> None:
        req = row.req
        ns, limit, _ = self._namespace(row)
        if req.prompt_logprobs is not None or not req.use_prefix_cache:
            limit = 0  # every prompt position's logits are needed / asked not to reuse
        blocks = self.prefix.lookup(ns, row.ids, limit) if limit > 0 else []
        row.reused = len(blocks) * self.prefix.block
        row.slot = self.kv.add_row()
        if blocks:
            self.kv.write_prefix(row.slot, blocks, self.prefix.block)
        feed = row.ids[row.reused :]
        view = SlotView(self.kv, row.slot, 1, len(feed))
        tok = 0
        if row.start is not None:
            tok = max(0, row.start - row.reused)
        group = self._row_group(row, None, tok)
        logits = self._forward(
            torch.tensor([feed]), view, [group] if group else [], req.prompt_logprobs is not None
        )
        if req.prompt_logprobs is not None:
            row.prompt_lp = self._prompt_logprobs(logits[0].float(), row.ids, req.prompt_logprobs)
        self._running.append(row)
        if self.metrics:
            self.metrics.prompt_tokens.inc(len(row.ids))
            self.metrics.reused_tokens.inc(row.reused)
            self.metrics.prefix_hits.inc(len(blocks))
        self._accept(row, logits[0, -1].float())

    def _prompt_logprobs(self, logits: Tensor, ids: list[int], k: int) -> list[Any]:
        lp = torch.log_softmax(logits, dim=-1)  # (n, V): position i predicts token i + 1
        out: list[Any] = [None]
        for i in range(1, len(ids)):
            out.append(self._lp_entry(lp[i - 1], ids[i], k))
        return out

    def _lp_entry(self, lp: Tensor, token: int, k: int) -> dict[str, Any]:
        top = {}
        if k > 0:
            vals, idx = torch.topk(lp, k)
            top = {int(i): float(v) for v, i in zip(vals, idx)}
        return {"token": token, "logprob": float(lp[token]), "top": top}

    # --- decode --------------------------------------------------------------------------------------------------
    def _decode(self) -> None:
        rows = self._running
        n = len(rows)
        t0 = time.perf_counter()
        ids = torch.tensor([[r.new[-1]] for r in rows])
        view = SlotView(self.kv, 0, n, 1)
        logits = self._forward(ids, view, self._decode_groups(rows), False)
        models = len({r.model_name for r in rows})
        self.stats["decode_steps"] += 1
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], n)
        self.stats["max_batch_models"] = max(self.stats["max_batch_models"], models)
        for i, r in enumerate(list(rows)):
            self._accept(r, logits[i, -1].float())
        dt = time.perf_counter() - t0
        self.step_log.append((n, models, dt))
        if self.metrics:
            self.metrics.observe_step(n, models, dt)

    def _decode_groups(self, rows: list[Row]) -> list[Any]:
        """What adds the adapters' terms in a decode step (cached while the batch's composition stays)."""
        adapted = [r.adapter if self._row_group(r, None, 0) is not None else None for r in rows]
        recs = list(dict.fromkeys(a for a in adapted if a is not None))
        if not recs:
            return []
        if len(recs) == 1 and all(a is not None for a in adapted):
            return [Group(recs[0].layers, None, 0)]
        index = {id(rec): k for k, rec in enumerate(recs)}
        key = (
            tuple((rec.name, rec.generation) for rec in recs),
            tuple(-1 if a is None else index[id(a)] for a in adapted),
            self.cfg.mixed_kernel,
        )
        if self._mixed_key != key:
            if self.cfg.mixed_kernel == "concat":
                rows_t = torch.tensor(key[1], device=self.device)
                self._mixed = Mixed(AdapterSet(recs, self.device, self.dtype), rows_t, self.dtype)
            else:
                self._mixed = Grouped(recs, list(key[1]), self.device, self.dtype)
            self._mixed_key = key
        return [self._mixed]

    # --- solo rows (members without a low-rank form) ---------------------------------------------------------------
    def _prefill_solo(self, row: Row) -> None:
        from transformers.cache_utils import DynamicCache

        from lorafam.core.inject import active_adapters

        row.solo_cache = DynamicCache()
        with active_adapters(self.model, [row.adapter.name]):
            out = self.model(
                input_ids=torch.tensor([row.ids], device=self.device), cache=row.solo_cache, use_cache=True
            )
        if row.req.prompt_logprobs is not None:
            row.prompt_lp = self._prompt_logprobs(out.logits[0].float(), row.ids, row.req.prompt_logprobs)
        self._solo.append(row)
        if self.metrics:
            self.metrics.prompt_tokens.inc(len(row.ids))
        self._accept(row, out.logits[0, -1].float())

    def _step_solo(self, row: Row) -> None:
        from lorafam.core.inject import active_adapters

        if row.finish is not None:
            return
        with active_adapters(self.model, [row.adapter.name]):
            out = self.model(
                input_ids=torch.tensor([[row.new[-1]]], device=self.device),
                cache=row.solo_cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self._accept(row, out.logits[0, -1].float())

    # --- sampling, text, finishing -------------------------------------------------------------------------------
    def _accept(self, row: Row, logits: Tensor) -> None:
        req = row.req
        tok = pick_token(logits, req.temperature, req.top_p, row.gen)
        now = time.perf_counter()
        if row.first_token_at is None:
            row.first_token_at = now
            if self.metrics:
                self.metrics.ttft.observe(now - req.submitted)
        row.new.append(tok)
        lp = None
        if req.logprobs is not None:
            lp = self._lp_entry(torch.log_softmax(logits, -1), tok, req.logprobs)
            row.gen_lp.append(lp)
        if self.metrics:
            self.metrics.generated_tokens.inc()
        finish = None
        if tok in self.eos and not req.ignore_eos:
            finish = "stop"
        elif len(row.new) >= req.max_tokens:
            finish = "length"
        self._emit_text(row, finish)
        if req.cancelled and row.finish is None:
            row.finish = "abort"
        if row.finish is not None:
            self._finish(row)

    def _emit_text(self, row: Row, finish: str | None) -> None:
        req = row.req
        ids = [t for t in row.new if t not in self.eos] if not req.ignore_eos else row.new
        text = self.tok.decode(ids, skip_special_tokens=True)
        stop_at = None
        if req.stop:
            lo = max(0, row.emitted - max(len(s) for s in req.stop))
            hits = [i for i in (text.find(s, lo) for s in req.stop) if i >= 0]
            if hits:
                stop_at = min(hits)
        if stop_at is not None:
            text, finish = text[:stop_at], "stop"
        if finish is None:
            safe = len(text) - (max(len(s) for s in req.stop) - 1 if req.stop else 0)
            while safe > row.emitted and text[safe - 1] == "\ufffd":  # an unfinished multi-byte character
                safe -= 1
        else:
            safe = len(text)
        delta = text[row.emitted : safe] if safe > row.emitted else ""
        lp = [row.gen_lp[-1]] if req.logprobs is not None and row.gen_lp else None
        if delta or finish is None or lp:
            row.req.on_event("text", {"delta": delta, "token_ids": [row.new[-1]], "logprobs": lp})
        row.emitted = max(row.emitted, safe)
        row.text = text
        if finish is not None:
            row.finish = finish

    def _finish(self, row: Row) -> None:
        req = row.req
        if row in self._running:
            self._write_back(row)
            self._free_slot(row)
            self._running.remove(row)
        elif row in self._solo:
            self._solo.remove(row)
            row.solo_cache = None
        self._release(req)
        ttft = (row.first_token_at or time.perf_counter()) - req.submitted
        total = time.perf_counter() - req.submitted
        if row.finish != "abort":
            req.on_event(
                "done",
                {
                    "finish_reason": row.finish,
                    "prompt_tokens": len(row.ids),
                    "completion_tokens": len(row.new),
                    "cached_tokens": row.reused,
                    "ttft_s": ttft,
                    "total_s": total,
                    "prompt_logprobs": row.prompt_lp,
                    "prompt_ids": list(row.ids),
                    "text": row.text,
                },
            )
        if self.metrics:
            self.metrics.requests.labels(row.finish or "unknown").inc()

    def _write_back(self, row: Row) -> None:
        """Put the whole blocks of prompt + generated tokens into the shared cache (aLoRA rows never write)."""
        ns, _, may_write = self._namespace(row)
        if not may_write or row.slot < 0:
            return
        seq = row.ids + row.new
        n = self.kv.lengths[row.slot]
        added = self.prefix.insert(
            ns, seq, n, lambda start: self.kv.read_block(row.slot, start, self.prefix.block)
        )
        self.stats["prefix_writes"] += added
        if self.metrics:
            self.metrics.prefix_writes.inc(added)
            self.metrics.prefix_blocks.set(len(self.prefix))

    def _free_slot(self, row: Row) -> None:
        moved = self.kv.remove_row(row.slot)
        if moved is not None:
            for other in self._running:
                if other.slot == moved:
                    other.slot = row.slot
        row.slot = -1

    def _release(self, req: GenRequest) -> None:
        rec = self.adapters.get(req.model)
        if rec is not None:
            with self._lock:
                rec.in_flight -= 1
            if rec.removing and rec.in_flight <= 0:
                self._remove(rec)

    def _fail(self, row: Row, message: str) -> None:
        self._release(row.req)
        row.req.on_event("error", {"message": message, "status": 500})
