"""A bounded load test: 200 concurrent requests over loopback, mixed adapters, two rounds."""

from __future__ import annotations

import asyncio
import gc
import time

import openai
import psutil

from tests.serve.conftest import start_server

MODELS = ["tiny", "lora-r4", "lora-r64", "dora", "alora", "adalora", "quantum", "rslora", "mopeft"]
REQUESTS = 200


async def _round(url: str) -> tuple[list, float]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
    t0 = time.perf_counter()

    async def one(i: int):
        model = MODELS[i % len(MODELS)]
        if i % 2:
            return await client.completions.create(
                model=model,
                prompt=f"Request {i}: the cat",
                max_tokens=4,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
        return await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Request {i}"}], max_tokens=4, temperature=0,
            extra_body={"ignore_eos": True},
        )  # fmt: skip

    results = await asyncio.gather(*(one(i) for i in range(REQUESTS)), return_exceptions=True)
    await client.close()
    return results, time.perf_counter() - t0


def test_200_concurrent_requests_no_error_no_loss_no_memory_growth(tiny_dir, adapter_dir, tokenizer):
    engine, server = start_server(tiny_dir, tokenizer, adapter_dir, max_batch=32, cache_tokens=2048)
    proc = psutil.Process()
    try:
        rss = []
        for _ in range(2):
            results, wall = asyncio.run(_round(server.url))
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, errors[:3]
            assert len(results) == REQUESTS
            assert all(r.usage.completion_tokens == 4 for r in results)
            assert wall < 240, f"round took {wall:.0f} s"
            gc.collect()
            assert not engine._running and not engine._solo and engine._waiting.empty()
            assert all(a.in_flight == 0 for a in engine.adapters.values())
            assert engine.kv.nbytes() == 0 and len(engine.prefix) <= engine.prefix.capacity
            rss.append(proc.memory_info().rss)
        assert engine.stats["max_batch_rows"] >= 16  # they were batched, not run one by one
        assert rss[1] - rss[0] < 64 * 2**20, f"RSS grew by {(rss[1] - rss[0]) / 2**20:.1f} MiB between rounds"
    finally:
        server.stop()
        engine.close()
