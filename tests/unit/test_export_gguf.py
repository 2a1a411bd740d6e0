"""``lorafam export --to gguf``: the llama.cpp LoRA GGUF layout (metadata, tensor names, shapes, Q/K row order), read
back with the ``gguf`` package and rebuilt into ΔW; llama.cpp itself loads it in tests/interop (``make interop``)."""

from __future__ import annotations

import argparse

import gguf
import numpy as np
import pytest
import torch

import lorafam as lf
from lorafam.commands import export as export_verb
from lorafam.export_gguf import export_gguf, permute_rows_for_llama_cpp
from tests.conftest import perturb_adapters


def _read(path):
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data) for t in r.tensors}
    return fields, tensors


def _unpermute(b: torch.Tensor, n_head: int) -> torch.Tensor:
    out = b.shape[0]
    return b.reshape(n_head, out // n_head // 2, 2, *b.shape[1:]).transpose(1, 2).reshape(b.shape)


@pytest.mark.parametrize(
    "make_cfg",
    [
        lambda: lf.LoraConfig(rank=4, alpha=8, targets="all-linear"),
        lambda: lf.LoraConfig(rank=4, alpha=8, targets="all-linear", use_rslora=True),
        lambda: lf.QuantumConfig(rank=4, alpha=8, layers=2, targets="all-linear"),
        lambda: lf.DoraConfig(rank=4, alpha=8, targets=["q_proj", "v_proj"]),
    ],
    ids=["lora", "rslora", "quantum-exact", "dora-svd"],
)
def test_gguf_tensors_rebuild_each_layers_delta_w(tmp_path, make_cfg):
    model = lf.tiny_llama(heads=4, kv_heads=2)
    cfg = make_cfg()
    lf.attach(model, cfg)
    perturb_adapters(model, std=0.3)
    rank = 64 if isinstance(cfg, lf.DoraConfig) else None  # full rank: SVD is then exact up to rounding
    res = export_gguf(model, tmp_path / "a.gguf", rank=rank)
    fields, tensors = _read(tmp_path / "a.gguf")
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama"
    alpha = float(fields["adapter.lora.alpha"])
    from lorafam.core.inject import adapted_layers

    checked = 0
    for path, layer in adapted_layers(model):
        block = int(path.split(".")[2])
        short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                 "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}[path.split(".")[-1]]  # fmt: skip
        a = torch.from_numpy(tensors[f"blk.{block}.{short}.weight.lora_a"]).float()
        b = torch.from_numpy(tensors[f"blk.{block}.{short}.weight.lora_b"]).float()
        base_w = layer.base_layer.weight
        assert a.shape[1] == base_w.shape[1] and b.shape[0] == base_w.shape[0] and a.shape[0] == b.shape[1]
        if short == "attn_q":
            b = _unpermute(b, 4)
        elif short == "attn_k":
            b = _unpermute(b, 2)
        got = (alpha / a.shape[0]) * (b @ a)  # what llama.cpp adds: alpha / rank · B A
        want = layer.adapters["default"].delta_weight(layer.base_layer).float()
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
        checked += 1
    assert checked > 0 and res.tensors == 2 * checked


def test_permutation_matches_the_embedded_gguf_q_and_k():
    """Our HF weights come from the embedded SmolLM2 GGUF (transformers undoes llama.cpp's Q/K row order); the
    same reordering applied to them must give the GGUF's tensors back exactly — so B gets llama.cpp's order."""
    from lorafam.models import gguf_path

    model = lf.load_model()
    reader = gguf.GGUFReader(str(gguf_path()))
    by_name = {t.name: t for t in reader.tensors}
    for hf, name, heads in [("q_proj", "attn_q", 9), ("k_proj", "attn_k", 3), ("v_proj", "attn_v", None)]:
        w = model.get_submodule(f"model.layers.1.self_attn.{hf}").weight.detach().float()
        t = by_name[f"blk.1.{name}.weight"]
        ref = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).float().reshape(w.shape)
        mine = permute_rows_for_llama_cpp(w, heads) if heads else w
        assert torch.equal(mine, ref), hf
        if heads:
            assert not torch.equal(w, ref)  # the reordering is needed, not a no-op


def test_refusals_name_the_reason(tmp_path):
    gpt2 = lf.attach(lf.tiny_gpt2(), lf.LoraConfig(rank=2, alpha=4, targets="all-linear"))
    with pytest.raises(ValueError, match="supports Llama-architecture bases.*'gpt2'"):
        export_gguf(gpt2, tmp_path / "x.gguf")
    alora = lf.attach(lf.tiny_llama(), lf.ALoraConfig(rank=2, alpha=4, invocation_tokens=[5, 6]))
    with pytest.raises(ValueError, match="cannot be exported as plain LoRA"):
        export_gguf(alora, tmp_path / "x.gguf")
    head = lf.attach(
        lf.tiny_llama(), lf.LoraConfig(rank=2, alpha=4, targets=["q_proj"], modules_to_save=["lm_head"])
    )
    with pytest.raises(ValueError, match=r"trains full module copies \(modules_to_save: \['lm_head'\]\)"):
        export_gguf(head, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_export_to_gguf(tmp_path, capsys):
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, alpha=8, targets="all-linear"))
    perturb_adapters(model)
    lf.save_adapter(model, tmp_path / "ad")
    parser = argparse.ArgumentParser()
    export_verb.add_arguments(parser)
    args = parser.parse_args(
        [str(tmp_path / "ad"), "--to", "gguf", str(tmp_path / "ad.gguf"), "--model", "tiny-llama"]
    )
    assert export_verb.run(args) == 0
    assert "llama-cli -m BASE.gguf --lora" in capsys.readouterr().out
    fields, tensors = _read(tmp_path / "ad.gguf")
    assert fields["adapter.type"] == "lora" and len(tensors) == 2 * 7 * 2  # 7 linear layers × 2 blocks × (a, b)
