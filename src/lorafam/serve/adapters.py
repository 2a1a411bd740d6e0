"""Adapter management of the engine: loading (never disturbing what is loaded), unloading, the LRU under
``max_loaded``, on-demand loads from ``--adapter-dir``, and the exact hot merge of a single mergeable adapter.

Everything that changes the served set runs on the scheduler thread between forwards (``Engine._call``).
"""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from lorafam.serve.lowrank import (
    BuiltAdapter,
    LowRank,
    build_adapters,
    export_adapter,
    invocation_of,
    served_method,
)
from lorafam.serve.requests import EngineError, ServedAdapter


class AdapterOps:
    """Mixed into :class:`lorafam.serve.batching.Engine` (which sets the attributes used here)."""

    def model_ids(self) -> list[str]:
        return [self.base_id, *sorted(set(self.adapters) | set(self.known))]

    def set_adapter_dir(self, path: str | Path | None) -> None:
        self.adapter_dir = None if path is None else Path(path).expanduser().resolve()
        if self.adapter_dir is not None:
            if not self.adapter_dir.is_dir():
                raise EngineError(f"--adapter-dir {path}: not a directory", 400)
            for sub in sorted(self.adapter_dir.iterdir()):
                if (sub / "adapter_config.json").is_file():
                    self.known.setdefault(sub.name, sub)

    def check_path(self, path: str | Path) -> Path:
        """The resolved adapter folder, or an EngineError naming why it cannot be loaded."""
        p = Path(path).expanduser()
        try:
            resolved = p.resolve()
        except OSError as exc:
            raise EngineError(f"lora_path {str(path)!r}: {exc}", 400, "lora_path") from exc
        if self.adapter_dir is not None and not resolved.is_relative_to(self.adapter_dir):
            raise EngineError(
                f"lora_path {str(path)!r} is outside --adapter-dir {self.adapter_dir}; only adapters under it "
                "can be loaded",
                400,
                "lora_path",
            )
        if not resolved.exists():
            raise EngineError(f"lora_path {str(path)!r}: no such directory", 400, "lora_path")
        if not (resolved / "adapter_config.json").is_file():
            raise EngineError(
                f"lora_path {str(path)!r}: not an adapter folder (adapter_config.json missing)", 400, "lora_path"
            )
        return resolved

    def load(self, name: str, path: str | Path, check_base: bool = True) -> ServedAdapter:
        """Load the adapter folder ``path`` as ``name``. On any error nothing changes (EngineError 400/409)."""
        if not name or name == self.base_id:
            raise EngineError(f"lora_name {name!r} is empty or the base model's id", 400, "lora_name")
        if name in self.adapters and not self.adapters[name].removing:
            raise EngineError(f"an adapter named {name!r} is already loaded; unload it first", 409, "lora_name")
        resolved = self.check_path(path)
        if check_base:
            from lorafam.serve.folders import AdapterMismatchError, check_adapter_base

            try:
                check_adapter_base(resolved, self.model, None)
            except AdapterMismatchError as exc:
                raise EngineError(str(exc), 400, "lora_path") from exc
        return self._call(lambda: self._load_now(name, resolved))

    def _load_now(self, name: str, resolved: Path) -> ServedAdapter:
        if name in self.adapters and not self.adapters[name].removing:
            raise EngineError(f"an adapter named {name!r} is already loaded; unload it first", 409, "lora_name")
        self._unmerge()  # DoRA's norm is taken on the original base weights
        try:
            built = build_adapters(self.linears, resolved)
            layers = export_adapter(built, self.linears)
        except (FileNotFoundError, ValueError, KeyError, TypeError, NotImplementedError, RuntimeError) as exc:
            if self.metrics:
                self.metrics.loads.labels("error").inc()
            raise EngineError(f"cannot load adapter {name!r} from {resolved}: {exc}", 400, "lora_path") from exc
        return self._install(name, resolved, built, layers)

    def _install(
        self, name: str, path: Path, built: BuiltAdapter, layers: dict[str, LowRank] | None
    ) -> ServedAdapter:
        if name in self.adapters and not self.adapters[name].removing:
            raise EngineError(f"an adapter named {name!r} is already loaded; unload it first", 409, "lora_name")
        if name in self.adapters:  # removing, still in flight: cannot reuse the name yet
            raise EngineError(f"adapter {name!r} is still finishing requests; retry", 409, "lora_name")
        self._evict_for_one()
        cfg = built.config
        self._generation += 1
        rec = ServedAdapter(
            name=name,
            path=str(path),
            method=served_method(cfg),
            rank=cfg.rank,
            config=cfg,
            invocation=invocation_of(cfg),
            chat_template=built.chat_template,
            created=int(time.time()),
            generation=self._generation,
        )
        if layers is None:
            self._attach_solo(name, built)
            rec.solo = True
        else:
            rec.layers = layers
        self.adapters[name] = rec
        self.known.setdefault(name, path)
        if self.metrics:
            self.metrics.loads.labels("ok").inc()
            self.metrics.loaded.set(len(self.adapters))
        return rec

    def _attach_solo(self, name: str, built: BuiltAdapter) -> None:
        from lorafam.core.checkpoint import WEIGHTS_NAME, load_adapter_state
        from lorafam.core.inject import adapted_layers, attach

        self._unmerge()
        attach(self.model, built.config, name=name, trainable=False)
        try:
            load_adapter_state(self.model, built.state, name, source=WEIGHTS_NAME)
        except Exception:
            _detach(self.model, name)
            raise
        for _, layer in adapted_layers(self.model):
            layer.active = []

    def _evict_for_one(self) -> None:
        limit = self.cfg.max_loaded
        if limit is None:
            return
        while len(self.adapters) >= limit:
            victim = next((a for a in self.adapters.values() if a.in_flight == 0), None)
            if victim is None:
                raise EngineError(
                    f"all {limit} loaded adapters (--max-loaded) are serving requests; retry shortly",
                    503,
                    retry_after=1,
                )
            self._remove(victim)
            if self.metrics:
                self.metrics.evictions.inc()

    def unload(self, name: str) -> None:
        """Unload ``name`` (after its running requests finish). EngineError 404 when it is not loaded."""

        def op() -> None:
            rec = self.adapters.get(name)
            if rec is None or rec.removing:
                raise EngineError(
                    f"no adapter named {name!r} is loaded; loaded: {sorted(self.adapters)}", 404, "lora_name"
                )
            rec.removing = True
            if rec.in_flight == 0:
                self._remove(rec)
            if self.adapter_dir is None or not Path(rec.path).is_relative_to(self.adapter_dir):
                self.known.pop(name, None)

        self._call(op)

    def _remove(self, rec: ServedAdapter) -> None:
        if self._merged is rec:
            self._unmerge()
        if rec.solo:
            _detach(self.model, rec.name)
        self.adapters.pop(rec.name, None)
        self.prefix.drop_namespace(rec.namespace)
        self._mixed_key = self._mixed = None
        if self.metrics:
            self.metrics.loaded.set(len(self.adapters))

    def resolve(self, model: str) -> ServedAdapter | None:
        """The adapter a request's ``model`` names (None: the base); loads from --adapter-dir on demand."""
        if model == self.base_id:
            return None
        rec = self.adapters.get(model)
        if rec is not None and not rec.removing:
            return rec
        if model in self.known and rec is None:
            path = self.check_path(self.known[model])
            from lorafam.serve.folders import AdapterMismatchError, check_adapter_base

            try:
                check_adapter_base(path, self.model, None)
            except AdapterMismatchError as exc:
                raise EngineError(str(exc), 400, "model") from exc

            def get_or_load() -> ServedAdapter:
                loaded = self.adapters.get(model)  # a concurrent request may have loaded it meanwhile
                if loaded is not None and not loaded.removing:
                    return loaded
                return self._load_now(model, path)

            return self._call(get_or_load)
        raise EngineError(
            f"The model `{model}` does not exist. Available: {', '.join(self.model_ids())}", 404, "model"
        )

    # --- merge policy --------------------------------------------------------------------------------------------
    def _merge_policy(self) -> None:
        if not self.cfg.merge_hot:
            return
        wanted = {r.model_name for r in self._running + self._solo}
        with self._waiting.mutex:
            wanted |= {r.model for r in self._waiting.queue}
        single = self.adapters.get(next(iter(wanted))) if len(wanted) == 1 else None
        if single is None or not single.mergeable or single.removing:
            self._single_steps = 0
            if self._merged is not None and wanted and wanted != {self._merged.name}:
                self._unmerge()
            return
        self._single_steps += 1
        if self._merged is None and self._single_steps >= self.cfg.merge_after:
            self._merge(single)

    def _merge(self, rec: ServedAdapter) -> None:
        if any(type(self.linears[p]) is not nn.Linear for p in rec.layers):
            return
        for p, lr in rec.layers.items():
            mod = self.linears[p]
            self._merged_orig[p] = mod.weight
            mod.weight = nn.Parameter(lr.merged_weight(mod.weight.detach()), requires_grad=False)
        self._merged = rec
        self.stats["merges"] += 1
        if self.metrics:
            self.metrics.merges.inc()

    def _unmerge(self) -> None:
        if self._merged is None:
            return
        for p, w in self._merged_orig.items():
            self.linears[p].weight = w
        self._merged_orig = {}
        self._merged = None
        self.stats["unmerges"] += 1
        if self.metrics:
            self.metrics.unmerges.inc()


def _detach(model: nn.Module, name: str) -> None:
    """Remove the attached (solo) adapter ``name`` from ``model``; the others stay as they are."""
    from lorafam.core.inject import detach

    detach(model, name)
