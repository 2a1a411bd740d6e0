"""``lorafam eval``: prompts rendered as in training, greedy outputs scored with exact match, token F1 and the
arena's checkers; a YAML's model / adapter_name_or_path / eval_dataset are used."""

from __future__ import annotations

import json

import pytest

import lorafam as lf
from lorafam.cli import main
from lorafam.commands._generation import generate_batch
from lorafam.commands.eval import eval_items, token_f1
from tests.conftest import perturb_adapters
from tests.train_support import make_tiny_model_dir, write_config, write_jsonl


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model_dir = make_tiny_model_dir(root)
    model = lf.attach(lf.load_model(str(model_dir)), lf.LoraConfig(rank=4, alpha=8, targets="all-linear"))
    perturb_adapters(model, std=0.2)
    lf.save_adapter(model, root / "ad")
    return root, model_dir, model.eval()


def test_token_f1():
    assert token_f1("The cat sat", "cat sat") == 1.0
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("red blue", "red green") == pytest.approx(0.5)


def test_eval_scores_the_adapters_greedy_outputs(setup, tmp_path, capsys):
    root, model_dir, model = setup
    tok = lf.load_tokenizer(str(model_dir))
    rows = [{"instruction": f"Say {w}", "input": "", "output": "?"} for w in ("red", "blue", "green", "sun")]
    items = eval_items([(f"r{i}", r) for i, r in enumerate(rows)], tok, "auto")
    outs = generate_batch(model, tok, [it["prompt"] for it in items], max_new_tokens=6)
    rows[0]["output"], rows[1]["output"] = outs[0], outs[1]  # two references the adapter produces exactly
    rows[2]["output"] = outs[2] + " extra words"
    data = write_jsonl(tmp_path / "held.jsonl", rows)
    code = main(["eval", "--model", str(model_dir), "--adapter", str(root / "ad"), "--data", str(data),
                 "--max-new-tokens", "6", "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    res = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert res["items"] == 4 and res["exact_match"] == pytest.approx(0.5) and res["checker_exact"] == 0.5
    preds = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [p["output"] for p in preds] == outs
    assert 0 < preds[2]["token_f1"] < 1 and not preds[2]["exact_match"]
    capsys.readouterr()
    # the base model (no adapter) decodes something else on the same file
    assert main(["eval", "--model", str(model_dir), "--data", str(data), "--max-new-tokens", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["exact_match"] < 0.5


def test_eval_takes_model_adapter_and_eval_dataset_from_a_yaml(setup, tmp_path, capsys):
    root, model_dir, _ = setup
    data = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "1+1=", "completion": "2"}])
    cfg = write_config(tmp_path / "c.yaml", model_name_or_path=str(model_dir), adapter_name_or_path=str(root / "ad"),
                       dataset=str(data), eval_dataset=str(data), lora_rank=4)  # fmt: skip
    assert main(["eval", str(cfg), "--max-new-tokens", "2", "--checker", "number"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["adapter"] == str(root / "ad") and res["items"] == 1 and "checker_number" in res


def test_eval_refuses_text_records_and_missing_data(tmp_path, capsys):
    data = write_jsonl(tmp_path / "t.jsonl", [{"text": "just text"}])
    assert main(["eval", "--data", str(data)]) == 1
    assert "has no reference answer" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
