"""Prometheus metrics of the server (``GET /metrics``), one registry per engine (tests start several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


class Metrics:
    """The counters, gauges and histograms the engine updates (all names start with ``lorafam_``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "lorafam_requests", "Finished generations by finish reason", ["finish_reason"], registry=r
        )
        self.rejected = Counter(
            "lorafam_requests_rejected", "Requests refused because the queue was full", registry=r
        )
        self.ttft = Histogram(
            "lorafam_time_to_first_token_seconds",
            "Seconds from submission to the first generated token",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.step = Histogram(
            "lorafam_decode_step_seconds",
            "Seconds per batched decode step",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.batch_rows = Histogram(
            "lorafam_decode_batch_rows", "Rows (requests) per decode step", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_models = Histogram(
            "lorafam_decode_batch_models",
            "Distinct models (base + adapters) per decode step",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.max_rows = Gauge("lorafam_decode_batch_rows_max", "Most rows seen in one decode step", registry=r)
        self.max_models = Gauge(
            "lorafam_decode_batch_models_max", "Most distinct models seen in one decode step", registry=r
        )
        self.tokens_per_s = Gauge(
            "lorafam_decode_tokens_per_second", "Generated tokens per second of the last decode step", registry=r
        )
        self.generated_tokens = Counter("lorafam_generated_tokens", "Generated tokens", registry=r)
        self.prompt_tokens = Counter("lorafam_prompt_tokens", "Prompt tokens received", registry=r)
        self.reused_tokens = Counter(
            "lorafam_prompt_tokens_reused", "Prompt tokens whose K/V came from the prefix cache", registry=r
        )
        self.prefix_hits = Counter("lorafam_prefix_cache_block_hits", "Prefix-cache blocks reused", registry=r)
        self.prefix_writes = Counter(
            "lorafam_prefix_cache_block_writes", "Prefix-cache blocks written", registry=r
        )
        self.prefix_blocks = Gauge("lorafam_prefix_cache_blocks", "Blocks held in the prefix cache", registry=r)
        self.loads = Counter("lorafam_adapter_loads", "Adapter loads by result", ["result"], registry=r)
        self.evictions = Counter(
            "lorafam_adapter_evictions", "Adapters evicted by the LRU (--max-loaded)", registry=r
        )
        self.loaded = Gauge("lorafam_adapters_loaded", "Adapters loaded now", registry=r)
        self.merges = Counter("lorafam_adapter_merges", "Hot adapter merged into the base weights", registry=r)
        self.unmerges = Counter("lorafam_adapter_unmerges", "Merged adapter swapped out again", registry=r)
        self.queue = Gauge("lorafam_queue_waiting", "Requests waiting to be admitted", registry=r)
        self.running = Gauge("lorafam_running_rows", "Rows in the running batch", registry=r)
        self._max_rows = 0
        self._max_models = 0

    def observe_step(self, rows: int, models: int, seconds: float) -> None:
        self.step.observe(seconds)
        self.batch_rows.observe(rows)
        self.batch_models.observe(models)
        self.running.set(rows)
        self._max_rows = max(self._max_rows, rows)
        self._max_models = max(self._max_models, models)
        self.max_rows.set(self._max_rows)
        self.max_models.set(self._max_models)
        if seconds > 0:
            self.tokens_per_s.set(rows / seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
