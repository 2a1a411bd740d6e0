"""The server on the real default model (SmolLM2-135M-Instruct): outputs, one mixed batch, aLoRA reuse."""

from __future__ import annotations

import threading

import openai
import pytest

import lorafam as lf
from benchmarks.serve_common import save_random_adapter

pytestmark = pytest.mark.slow


def _save(model, cfg, path, seed: int):
    return save_random_adapter(model, cfg, path, seed, name="x")


def test_smollm2_adapters_served_together_match_lf_generate(tmp_path):
    from lorafam.serve.app import ServerThread, create_app, render_chat
    from lorafam.serve.batching import Engine
    from lorafam.serve.metrics import Metrics

    tok = lf.load_tokenizer()
    ref = lf.load_model()
    judge_cfg = lf.ALoraConfig.from_string("<|im_start|>assistant\n", tok, rank=8, alpha=16, targets="all-linear")
    paths = {
        "lora": _save(ref, lf.LoraConfig(rank=8, alpha=16, targets="all-linear"), tmp_path / "lora", 1),
        "dora": _save(ref, lf.DoraConfig(rank=8, alpha=16, targets="all-linear"), tmp_path / "dora", 2),
        "judge": _save(ref, judge_cfg, tmp_path / "judge", 3),
    }
    for name, path in paths.items():
        lf.load_adapter(ref, path, name=name)
    engine = Engine(lf.load_model(), tok, base_id="smollm2", metrics=Metrics())
    for name, path in paths.items():
        engine.load(name, path)
    engine.start()
    server = ServerThread(create_app(engine)).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)
    try:
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        ids = render_chat(tok, messages, None)
        want = {
            name: lf.generate(ref, tok, ids, adapter=None if name == "smollm2" else name, max_new_tokens=5).text
            for name in ("smollm2", "lora", "dora", "judge")
        }
        alone = {}
        for name in want:
            out = client.chat.completions.create(model=name, messages=messages, max_tokens=5, temperature=0)
            alone[name] = out.choices[0].message.content
        assert alone == want
        together: dict[str, str] = {}

        def ask(name: str) -> None:
            out = client.chat.completions.create(model=name, messages=messages, max_tokens=5, temperature=0)
            together[name] = out.choices[0].message.content

        threads = [threading.Thread(target=ask, args=(n,)) for n in want]
        with engine.hold():
            for t in threads:
                t.start()
            while engine._waiting.qsize() < len(threads):
                threading.Event().wait(0.01)
        for t in threads:
            t.join(timeout=300)
        assert together == want
        assert engine.stats["max_batch_models"] >= 4
        # the judge after the base model's turn: history reused, the answer unchanged
        history = [
            *messages,
            {"role": "assistant", "content": want["smollm2"]},
            {"role": "user", "content": "Sure?"},
        ]
        client.chat.completions.create(model="smollm2", messages=history, max_tokens=1, temperature=0)
        writes = engine.stats["prefix_writes"]
        judged = client.chat.completions.create(model="judge", messages=history, max_tokens=5, temperature=0)
        assert judged.usage.prompt_tokens_details.cached_tokens >= 32
        assert engine.stats["prefix_writes"] == writes
        expect = lf.generate(ref, tok, render_chat(tok, history, None), adapter="judge", max_new_tokens=5).text
        assert judged.choices[0].message.content == expect
    finally:
        server.stop()
        engine.close()
