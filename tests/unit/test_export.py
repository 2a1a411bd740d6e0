"""``lorafam export --to lora``: Quantum-PEFT exactly, DoRA / AdaLoRA by SVD, refusals — checked by loading in PEFT."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import lorafam as lf
from lorafam.commands import export as export_verb
from lorafam.export import export_lora
from tests.conftest import perturb_adapters

peft = pytest.importorskip("peft")
ARCHS = {"llama": lf.tiny_llama, "gpt2": lf.tiny_gpt2}


def main(argv: list[str]) -> int:
    """Run the ``export`` verb as the CLI does (its own parser: independent of other verbs' modules)."""
    import argparse

    assert argv[0] == "export"
    parser = argparse.ArgumentParser(prog="lorafam export")
    export_verb.add_arguments(parser)
    return export_verb.run(parser.parse_args(argv[1:]))


def _x() -> torch.Tensor:
    return torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def _peft_logits(make, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(make(), path).eval()
    with torch.no_grad():
        return pm(_x()).logits


@pytest.mark.parametrize("arch", list(ARCHS))
def test_quantum_exports_to_exact_plain_lora_that_peft_loads(tmp_path, arch):
    make = ARCHS[arch]
    model = lf.attach(make(), lf.QuantumConfig(rank=4, alpha=8, layers=2, targets="all-linear"))
    perturb_adapters(model, std=0.3)
    with torch.no_grad():
        expected = model(_x()).logits
    report = export_lora(model, tmp_path / "lora")
    assert (report.route, report.rank, report.alpha) == ("exact", 4, 8.0)
    assert report.max_rel_error < 1e-5
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and "lorafam_config" not in cfg
    torch.testing.assert_close(_peft_logits(make, tmp_path / "lora"), expected, atol=1e-5, rtol=1e-5)
    # and the plain-LoRA copy loads back in lorafam as LoRA with the same outputs
    again = lf.load_adapter(make(), tmp_path / "lora")
    assert isinstance(lf.configs(again)["default"], lf.LoraConfig)
    with torch.no_grad():
        torch.testing.assert_close(again(_x()).logits, expected, atol=1e-5, rtol=1e-5)


def test_export_cli_round_trip_with_compatibility_matrix(tmp_path, capsys):
    model = lf.attach(lf.tiny_llama(), lf.QuantumConfig(rank=4, alpha=8, targets=["q_proj", "v_proj"]))
    perturb_adapters(model, std=0.3)
    with torch.no_grad():
        expected = model(_x()).logits
    lf.save_adapter(model, tmp_path / "q")
    assert json.loads((tmp_path / "q" / "adapter_config.json").read_text())["peft_type"] == "LORAFAM_QUANTUM"
    assert main(["export", str(tmp_path / "q"), "--to", "lora", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    for word in ("PEFT", "vLLM", "llama.cpp", "Ollama", "merge", "exact"):
        assert word in printed
    torch.testing.assert_close(_peft_logits(lf.tiny_llama, tmp_path / "out"), expected, atol=1e-5, rtol=1e-5)


def test_dora_svd_export_reports_its_error_and_is_exact_at_full_rank(tmp_path):
    model = lf.attach(lf.tiny_llama(), lf.DoraConfig(rank=4, alpha=8, targets=["q_proj"]))
    perturb_adapters(model, std=0.2)
    low = export_lora(model, tmp_path / "low", rank=4)
    assert low.route == "svd" and low.max_rel_error > 1e-3  # DoRA's ΔW is not rank 4
    full = export_lora(model, tmp_path / "full", rank=64)
    assert full.max_rel_error < 1e-5
    with torch.no_grad():
        expected = model(_x()).logits
    torch.testing.assert_close(_peft_logits(lf.tiny_llama, tmp_path / "full"), expected, atol=1e-4, rtol=1e-4)


def test_cli_warns_by_name_when_the_export_is_approximate(tmp_path, capsys):
    """DoRA at rank r is approximate: the CLI says so on stderr, naming DoRA and the error; at full rank, and for
    AdaLoRA at its own rank (exact by SVD), it does not."""
    model = lf.attach(lf.tiny_llama(), lf.DoraConfig(rank=4, alpha=8, targets=["q_proj"]))
    perturb_adapters(model, std=0.2)
    lf.save_adapter(model, tmp_path / "dora")
    assert (
        main(["export", str(tmp_path / "dora"), "--to", "lora", str(tmp_path / "low"), "--model", "tiny-llama"])
        == 0
    )
    err = capsys.readouterr().err
    assert (
        "warning:" in err
        and "dora exported to a rank-4 LoRA is approximate" in err
        and "DoRA's ΔW is full rank" in err
    )
    assert (
        main(
            ["export", str(tmp_path / "dora"), "--to", "gguf", str(tmp_path / "low.gguf"), "--model", "tiny-llama"]
        )
        == 0
    )
    assert "dora exported to a rank-4 LoRA is approximate" in capsys.readouterr().err
    assert (
        main(
            [
                "export",
                str(tmp_path / "dora"),
                "--to",
                "lora",
                str(tmp_path / "full"),
                "--model",
                "tiny-llama",
                "--rank",
                "64",
            ]
        )
        == 0
    )
    assert "warning" not in capsys.readouterr().err
    ada = lf.attach(lf.tiny_llama(), lf.AdaLoraConfig(rank=4, alpha=8, targets=["q_proj"], target_rank=2))
    perturb_adapters(ada, std=0.2)
    lf.save_adapter(ada, tmp_path / "ada")
    assert (
        main(
            ["export", str(tmp_path / "ada"), "--to", "lora", str(tmp_path / "ada-lora"), "--model", "tiny-llama"]
        )
        == 0
    )
    assert "warning" not in capsys.readouterr().err  # fmt: skip


def test_mixture_and_alora_are_refused_with_the_reason(tmp_path):
    mix = lf.attach(lf.tiny_llama(), lf.MixtureConfig(experts=["lora", "quantum"], rank=4, alpha=8))
    with pytest.raises(ValueError, match="router's gates depend on the input"):
        export_lora(mix, tmp_path / "m")
    lf.save_adapter(mix, tmp_path / "mix")
    assert main(["export", str(tmp_path / "mix"), "--to", "lora", str(tmp_path / "m2")]) == 2
    assert not (tmp_path / "m2").exists()
    alora = lf.attach(lf.tiny_llama(), lf.MEMBERS["alora"].make_config(rank=4, alpha=8, invocation_tokens=[5, 6]))
    with pytest.raises(ValueError, match="cannot be exported"):
        export_lora(alora, tmp_path / "a")
