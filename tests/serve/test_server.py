"""``lorafam serve`` over real HTTP: the official openai client against uvicorn on 127.0.0.1, tiny models."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import openai
import pytest
import torch

import lorafam as lf
from tests.serve.conftest import start_server
from tests.serve.support import INVOCATION, member_configs, metric, raw, reference, write_adapter

PROMPT_TEXT = "The red cat sat on the hill and"
N = 8


def _prompt(tokenizer) -> list[int]:
    return tokenizer(PROMPT_TEXT, add_special_tokens=False).input_ids + INVOCATION  # aLoRA switches on at the end


def _complete(client, model: str, prompt: list[int], n: int = N, **kw):
    return client.completions.create(
        model=model, prompt=prompt, max_tokens=n, temperature=0, extra_body={"ignore_eos": True}, **kw
    )


def test_models_lists_base_and_every_adapter_with_parent_method_rank(served):
    _, _, client = served
    cards = {m.id: m for m in client.models.list().data}
    assert cards["tiny"].parent is None
    for name, cfg in member_configs().items():
        card = cards[name]
        assert card.parent == "tiny"
        assert card.rank == cfg.rank
        assert card.method == ("rslora" if name == "rslora" else {"mopeft": "mixture"}.get(name, cfg.method))
    assert cards["mopeft"].batching == "own" and cards["dora"].batching == "shared"


def test_greedy_equals_lf_generate_for_every_member(served, tiny_dir: Path, adapter_dir: Path, tokenizer):
    _, _, client = served
    prompt = _prompt(tokenizer)
    for name in [*member_configs(), "tiny"]:
        path = None if name == "tiny" else adapter_dir / name
        want = tokenizer.decode(reference(tiny_dir, path, name, prompt, N), skip_special_tokens=True)
        got = _complete(client, name, prompt)
        assert got.choices[0].text == want, name
        assert got.usage.completion_tokens == N


def test_peft_format_adapters_equal_peft(served, tiny_dir: Path, adapter_dir: Path, tokenizer):
    from peft import PeftModel

    _, _, client = served
    prompt = _prompt(tokenizer)
    for name in ("lora-r4", "rslora", "dora", "alora"):
        base = lf.load_model(str(tiny_dir))
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir / name)).eval()
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = peft_model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=N,
                min_new_tokens=N,
                do_sample=False,
                pad_token_id=0,
            )
        want = tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)
        assert _complete(client, name, prompt).choices[0].text == want, name


def test_concurrent_mixed_adapters_equal_each_alone_in_one_batch(served, tokenizer):
    engine, server, client = served
    prompt = _prompt(tokenizer)
    names = ["lora-r4", "lora-r64", "dora", "alora", "tiny"]
    alone = {n: _complete(client, n, prompt, n=12).choices[0].text for n in names}
    before = engine.stats["decode_steps"]
    results: dict[str, str] = {}

    def ask(name: str) -> None:
        results[name] = _complete(client, name, prompt, n=12).choices[0].text

    threads = [threading.Thread(target=ask, args=(n,)) for n in names]
    with engine.hold():  # all five are queued before the first is admitted
        for t in threads:
            t.start()
        deadline = 0
        while engine._waiting.qsize() < len(names) and deadline < 600:
            threading.Event().wait(0.01)
            deadline += 1
    for t in threads:
        t.join(timeout=120)
    assert results == alone
    assert engine.stats["decode_steps"] - before == 11  # 12 tokens: 1 from each prefill + 11 shared decode steps
    text = raw(server.url + "/metrics").text
    assert metric(text, "lorafam_decode_batch_models_max") >= 5
    assert metric(text, "lorafam_decode_batch_rows_max") >= 5


def test_stream_chunks_join_to_the_non_streamed_text_and_end_with_done(served, tokenizer):
    _, server, client = served
    prompt = _prompt(tokenizer)
    for name in ("dora", "mopeft"):
        whole = _complete(client, name, prompt, n=10).choices[0].text
        chunks = list(_complete(client, name, prompt, n=10, stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
        assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].choices == []
    msgs = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model="alora", messages=msgs, max_tokens=10, temperature=0)
    parts = client.chat.completions.create(model="alora", messages=msgs, max_tokens=10, temperature=0, stream=True)
    joined = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert joined == whole.choices[0].message.content
    body = {"model": "lora-r4", "messages": msgs, "max_tokens": 5, "temperature": 0, "stream": True}
    sse = raw(server.url + "/v1/chat/completions", body)
    events = [line for line in sse.text.splitlines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][5:])["choices"][0]["delta"]["role"] == "assistant"


def test_stop_strings_cut_text_in_both_modes(served, tokenizer):
    _, _, client = served
    prompt = _prompt(tokenizer)
    full = _complete(client, "lora-r4", prompt, n=12).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = _complete(client, "lora-r4", prompt, n=12, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text for c in _complete(client, "lora-r4", prompt, n=12, stop=[stop], stream=True)
    )
    assert streamed == cut.choices[0].text


def test_echo_logprobs_score_the_prompt_like_the_model(served, tiny_dir: Path, adapter_dir: Path, tokenizer):
    """What lm-evaluation-harness's local-completions reads for loglikelihood tasks."""
    _, _, client = served
    text = "The red cat sat on the hill"
    ids = tokenizer(text).input_ids
    model = lf.load_model(str(tiny_dir))
    lf.load_adapter(model, adapter_dir / "dora", name="dora")
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    want = [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]
    for max_tokens in (0, 1):
        out = client.completions.create(
            model="dora", prompt=text, max_tokens=max_tokens, echo=True, logprobs=1, temperature=0
        )
        got = out.choices[0].logprobs
        assert got.token_logprobs[0] is None
        assert got.token_logprobs[1 : len(ids)] == pytest.approx(want, abs=1e-4)
        assert len(got.tokens) == len(ids) + max_tokens
        assert out.choices[0].text.startswith(text)
        greedy = [max(top.values()) for top in got.top_logprobs[1 : len(ids)]]
        assert all(g >= t - 1e-6 for g, t in zip(greedy, got.token_logprobs[1 : len(ids)]))


def test_sampling_with_seed_is_reproducible(served, tokenizer):
    _, _, client = served
    prompt = _prompt(tokenizer)
    a = _complete(client, "dora", prompt, n=10)
    kw = {"temperature": 1.0, "top_p": 0.9, "seed": 7}
    s1 = client.completions.create(model="dora", prompt=prompt, max_tokens=10, **kw).choices[0].text
    s2 = client.completions.create(model="dora", prompt=prompt, max_tokens=10, **kw).choices[0].text
    assert s1 == s2 and s1 != a.choices[0].text


def test_alora_after_a_base_turn_reuses_the_history_and_never_writes_the_cache(
    served, tiny_dir, adapter_dir, tokenizer
):
    engine, _, client = served
    history = [{"role": "user", "content": "Tell me about the red cat on the hill, please."}]
    base = client.chat.completions.create(model="tiny", messages=history, max_tokens=12, temperature=0)
    history += [
        {"role": "assistant", "content": base.choices[0].message.content},
        {"role": "user", "content": "Is that kind?"},
    ]
    snapshot = {k: (v[0], [t.clone() for t in v[1][0]]) for k, v in engine.prefix.entries.items()}
    writes = engine.stats["prefix_writes"]
    judged = client.chat.completions.create(model="alora", messages=history, max_tokens=6, temperature=0)
    assert judged.usage.prompt_tokens_details.cached_tokens >= 32  # the base turn's blocks
    assert engine.stats["prefix_writes"] == writes
    assert set(engine.prefix.entries) == set(snapshot)
    for key, (toks, keys) in snapshot.items():
        assert engine.prefix.entries[key][0] == toks
        assert all(torch.equal(a, b) for a, b in zip(keys, engine.prefix.entries[key][1][0]))
    # the reused answer is exactly the adapter's answer without any cache
    from lorafam.serve.app import render_chat

    ids = render_chat(tokenizer, history, None)
    model = lf.load_model(str(tiny_dir))
    lf.load_adapter(model, adapter_dir / "alora", name="alora")
    want = lf.generate(model, tokenizer, ids, adapter="alora", max_new_tokens=6)
    assert judged.choices[0].message.content == want.text


def test_errors_have_openai_shape_and_status(served, tiny_dir, adapter_dir, tokenizer, tmp_path):
    engine, server, client = served
    loaded = sorted(engine.adapters)
    url = server.url + "/v1"
    bad = raw(url + "/completions", b'{"model": "tiny", "prompt": ')
    assert bad.status == 400 and "malformed JSON" in bad.json()["error"]["message"]
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    for field, value in (("temperature", 3.0), ("top_p", 0.0), ("max_tokens", -1), ("logprobs", 99), ("n", 2)):
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="tiny", prompt="x", **{field: value})
        assert err.value.body["param"] == field and field in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])
    assert err.value.body["param"].startswith("messages")
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="nope", prompt="x")
    assert "lora-r4" in err.value.message and "tiny" in err.value.message and err.value.body["param"] == "model"

    def load(name: str, path: str) -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as caught:
            client.post("/load_lora_adapter", body={"lora_name": name, "lora_path": path}, cast_to=str)
        return caught.value

    assert load("x", str(adapter_dir / "missing")).status_code == 400
    outside = write_adapter(tiny_dir, tmp_path / "outside", lf.LoraConfig(rank=2, targets="all-linear"), 9)
    e = load("x", str(outside))
    assert e.status_code == 400 and "outside --adapter-dir" in e.message
    other = adapter_dir / "other-base"
    write_adapter(tiny_dir, other, lf.LoraConfig(rank=2, targets="all-linear"), 10)
    cfg = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(
        json.dumps({**cfg, "base_model_name_or_path": str(tmp_path / "llama-70b")})
    )
    e = load("x", str(other))
    assert e.status_code == 400 and "trained on base" in e.message
    unsupported = adapter_dir / "unsupported"
    unsupported.mkdir()
    (unsupported / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "PROMPT_TUNING"}))
    e = load("x", str(unsupported))
    assert e.status_code == 400 and "PROMPT_TUNING" in e.message
    wrong_shape = adapter_dir / "wrong-shape"
    write_adapter(tiny_dir, wrong_shape, lf.LoraConfig(rank=2, targets="all-linear"), 11)
    from safetensors.torch import load_file, save_file

    state = load_file(str(wrong_shape / "adapter_model.safetensors"))
    key = next(iter(state))
    state[key] = torch.zeros(3, 7)
    save_file(state, str(wrong_shape / "adapter_model.safetensors"))
    e = load("x", str(wrong_shape))
    assert e.status_code == 400 and "shape" in e.message
    dup = load("dora", str(adapter_dir / "lora-r4"))
    assert dup.status_code == 409
    # nothing above disturbed what was loaded
    assert sorted(engine.adapters) == loaded
    prompt = _prompt(tokenizer)
    want = tokenizer.decode(reference(tiny_dir, adapter_dir / "dora", "dora", prompt, N), skip_special_tokens=True)
    assert _complete(client, "dora", prompt).choices[0].text == want
    # 503 with Retry-After on a full queue
    engine.cfg.max_queue, keep = 1, engine.cfg.max_queue
    try:
        with engine.hold():
            first = threading.Thread(target=lambda: _complete(client, "tiny", prompt, n=1))
            first.start()
            while engine._waiting.qsize() < 1:
                threading.Event().wait(0.01)
            full = raw(url + "/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1})
        first.join(timeout=60)
    finally:
        engine.cfg.max_queue = keep
    assert full.status == 503 and int(full.headers["retry-after"]) >= 1
    assert full.json()["error"]["type"] == "ServiceUnavailableError"


def test_api_key_is_required_when_set(tiny_dir, tokenizer):
    engine, server = start_server(tiny_dir, tokenizer, api_key="s3cret")
    try:
        wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        missing = raw(server.url + "/v1/models")
        assert missing.status == 401 and "missing API key" in missing.json()["error"]["message"]
        ok = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in ok.models.list().data] == ["tiny"]
        assert raw(server.url + "/health").status == 200  # health and metrics stay open
    finally:
        server.stop()
        engine.close()


def test_runtime_load_unload_lru_and_hot_merge(tiny_dir, adapter_dir, tokenizer):
    engine, server = start_server(tiny_dir, tokenizer, adapter_dir, max_loaded=2, merge_after=3)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    prompt = _prompt(tokenizer)
    try:
        ids = {m.id: m for m in client.models.list().data}
        assert not ids["dora"].loaded  # on disk under --adapter-dir, loaded on first use
        for name in ("lora-r4", "dora", "quantum", "lora-r4"):
            want = tokenizer.decode(
                reference(tiny_dir, adapter_dir / name, name, prompt, 16), skip_special_tokens=True
            )
            assert _complete(client, name, prompt, n=16).choices[0].text == want, name
            assert len(engine.adapters) <= 2
        text = raw(server.url + "/metrics").text
        assert metric(text, "lorafam_adapter_evictions_total") == 2
        assert metric(text, "lorafam_adapter_merges_total") >= 3  # each single-adapter run of 16 tokens merged
        assert metric(text, "lorafam_adapter_unmerges_total") >= 2
        client.post("/unload_lora_adapter", body={"lora_name": "lora-r4"}, cast_to=str)
        assert "lora-r4" not in engine.adapters
        extra = write_adapter(tiny_dir, adapter_dir / "late", lf.LoraConfig(rank=3, targets="all-linear"), 12)
        client.post("/load_lora_adapter", body={"lora_name": "late", "lora_path": str(extra)}, cast_to=str)
        assert any(m.id == "late" and m.rank == 3 for m in client.models.list().data)
        with pytest.raises(openai.NotFoundError):
            client.post("/unload_lora_adapter", body={"lora_name": "never"}, cast_to=str)
    finally:
        server.stop()
        engine.close()


def test_chat_command_keeps_its_history_in_the_engine(tiny_dir, adapter_dir, capsys):
    """Second turn: the first turn's prompt and reply come from the prefix cache (printed reuse count)."""
    from lorafam.cli import build_parser
    from lorafam.commands import chat

    argv = ["chat", "--model", str(tiny_dir), "--adapter", str(adapter_dir / "dora"), "--max-new-tokens", "6"]
    args = build_parser().parse_args(argv)
    lines = iter(["Tell me about the red cat on the hill.", "And the dog?", "/exit"])
    assert chat.run(args, input_fn=lambda _: next(lines)) == 0
    out = capsys.readouterr().out
    reused = [int(line.split("reused ")[1].split(" of")[0]) for line in out.splitlines() if "reused" in line]
    assert len(reused) == 2 and reused[0] == 0 and reused[1] >= 32
