"""The engine without HTTP: mixed batches on a base with biases (DoRA's offset term), slot bookkeeping."""

from __future__ import annotations

import threading

import torch

import lorafam as lf
from lorafam.serve.batching import Engine, EngineConfig, GenRequest


def _biased_model_dir(tmp_path, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attention_bias=True, mlp_bias=True, max_position_embeddings=256,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "biased")
    tok.save_pretrained(tmp_path / "biased")
    return tmp_path / "biased"


def test_mixed_batch_with_dora_on_biased_layers_equals_each_alone(tmp_path, tokenizer):
    from tests.serve.support import reference, write_adapter

    model_dir = _biased_model_dir(tmp_path, tokenizer)
    paths = {
        "dora": write_adapter(
            model_dir, tmp_path / "dora", lf.DoraConfig(rank=4, alpha=8, targets="all-linear"), 1
        ),
        "lora": write_adapter(
            model_dir, tmp_path / "lora", lf.LoraConfig(rank=8, alpha=8, targets="all-linear"), 2
        ),
    }
    engine = Engine(lf.load_model(str(model_dir)), tokenizer, base_id="b", config=EngineConfig(merge_hot=False))
    for name, path in paths.items():
        engine.load(name, path)
    engine.start()
    prompts = [[5, 9, 200, 31 + i, 77] for i in range(4)]
    models = ["dora", "lora", "b", "dora"]
    want = [reference(model_dir, paths.get(m), m if m != "b" else None, p, 6) for m, p in zip(models, prompts)]
    got: dict[int, list[int]] = {}

    def run(i: int) -> None:
        req = GenRequest(model=models[i], prompt_ids=prompts[i], max_tokens=6, temperature=0, ignore_eos=True)
        got[i] = engine.generate(req)["token_ids"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    with engine.hold():
        for t in threads:
            t.start()
        while engine._waiting.qsize() < 4:
            threading.Event().wait(0.01)
    for t in threads:
        t.join(timeout=120)
    engine.close()
    assert [got[i] for i in range(4)] == want
    assert engine.stats["max_batch_rows"] == 4 and engine.stats["max_batch_models"] == 3
    assert engine.kv.lengths == []  # every slot freed
