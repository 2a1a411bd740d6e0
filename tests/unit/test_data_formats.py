"""Dataset formats, prompt masking on the rendered chat template, bad input, packing without cross-attention."""

from __future__ import annotations

import json

import pytest
import torch

import lorafam as lf
from lorafam.data.dataset import collate, load_examples, pack, split, to_rows
from lorafam.data.encode import IGNORE_INDEX, encode
from lorafam.data.formats import DatasetError, normalise, read_records
from tests.train_support import write_jsonl


@pytest.fixture(scope="module")
def tok():
    return lf.load_tokenizer()


def trained_text(tok, enc) -> str:
    return tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX])


def test_alpaca_masks_the_prompt_and_trains_the_reply(tok):
    ex = normalise({"instruction": "Reverse:", "input": "a b c", "output": "c b a"}, "x: line 1")
    enc = encode(tok, ex, 256)
    assert trained_text(tok, enc) == "c b a<|im_end|>\n"
    full = tok.decode(enc.input_ids)
    assert full == tok.apply_chat_template(
        [{"role": "user", "content": "Reverse:\na b c"}, {"role": "assistant", "content": "c b a"}], tokenize=False
    )
    everything = encode(tok, ex, 256, train_on_prompt=True)
    assert everything.labels == everything.input_ids


def test_messages_multi_turn_trains_every_assistant_turn(tok):
    rec = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Ciao"},
        ]
    }
    enc = encode(tok, normalise(rec, "x"), 256)
    assert trained_text(tok, enc) == "Hello<|im_end|>\nCiao<|im_end|>\n"


def test_sharegpt_roles_are_mapped(tok):
    rec = {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}
    ex = normalise(rec, "x")
    assert ex.fmt == "sharegpt" and ex.messages[-1] == {"role": "assistant", "content": "A."}
    assert trained_text(tok, encode(tok, ex, 256)) == "A.<|im_end|>\n"
    with pytest.raises(DatasetError, match=r"conversations\[0\].from='robot'"):
        normalise({"conversations": [{"from": "robot", "value": "x"}]}, "x")


def test_prompt_completion_and_text(tok):
    pc = encode(tok, normalise({"prompt": "2+2=", "completion": "4"}, "x"), 64)
    assert trained_text(tok, pc) == "4" + tok.eos_token
    text = encode(tok, normalise({"text": "hello world"}, "x"), 64)
    assert trained_text(tok, text) == "hello world" + tok.eos_token


def test_unknown_format_lists_the_expected_fields():
    with pytest.raises(DatasetError, match=r"f: line 3: cannot tell the format from fields \['foo'\]"):
        normalise({"foo": 1}, "f: line 3")


def test_json_list_and_jsonl_are_read(tmp_path, tok):
    rows = [{"instruction": "i", "output": "o"}, {"text": "t"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    write_jsonl(tmp_path / "d.jsonl", rows)
    for name in ("d.json", "d.jsonl"):
        examples, stats = load_examples([str(tmp_path / name)], tok, 64)
        assert len(examples) == 2 and stats.formats == {"alpaca": 1, "text": 1}


def test_missing_file_names_it(tmp_path, tok):
    with pytest.raises(DatasetError, match="dataset: file not found: .*nope.jsonl"):
        load_examples([str(tmp_path / "nope.jsonl")], tok, 64)


def test_malformed_line_names_file_and_line_or_is_skipped_and_counted(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"\n{"text": "c"}\n[1]\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl: line 2: invalid JSON"):
        read_records(path)
    examples, stats = load_examples([str(path)], tok, 64, skip_bad_lines=True)
    assert len(examples) == 2 and stats.bad_lines == {str(path): [2, 4]}
    assert "2 bad lines skipped" in stats.summary()


def test_long_examples_are_truncated_and_counted(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "completion": "word " * 200}, {"text": "short"}])
    examples, stats = load_examples([str(path)], tok, 32)
    assert stats.truncated == 1 and max(len(e.input_ids) for e in examples) == 32
    assert "1 truncated to cutoff_len" in stats.summary()


def test_empty_after_filtering_is_an_error(tmp_path, tok):
    # the prompt alone fills cutoff_len, so no target token survives truncation
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "word " * 100, "completion": "x"}])
    with pytest.raises(DatasetError, match="no usable example .* 1 had no target token within cutoff_len=16"):
        load_examples([str(path)], tok, 16)


def test_split_is_seeded_and_disjoint(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}"} for i in range(20)])
    examples, _ = load_examples([str(path)], tok, 16)
    train, val = split(examples, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert split(examples, 0.25, seed=3)[1] == val
    assert {id(e) for e in train}.isdisjoint({id(e) for e in val})


def test_packing_keeps_samples_from_attending_to_each_other(tok):
    """Logits of each sample inside a packed row equal its logits when run alone."""
    model = lf.tiny_llama(vocab_size=len(tok), hidden=32, layers=2, intermediate=64)
    texts = ["the cat sat", "a much longer sentence about dogs and rain", "sun"]
    examples = [encode(tok, normalise({"text": t}, "x"), 64) for t in texts]
    rows = pack(examples, cutoff_len=64)
    assert len(rows) == 1 and rows[0].position_ids[: len(examples[0].input_ids)] == list(range(3 + 1))
    batch = collate(rows, tok.pad_token_id, packed=True)
    with torch.no_grad():
        # no cache and no 2-D mask: transformers derives a block-diagonal mask from the position ids
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for e in examples:
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            n = len(e.input_ids)
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=1e-5)
            start += n


def test_collate_pads_right_and_masks_labels(tok):
    rows = to_rows([encode(tok, normalise({"text": t}, "x"), 64) for t in ("a", "a b c d")])
    b = collate(rows, pad_id=7)
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape
    n0 = len(rows[0].input_ids)
    assert (b["input_ids"][0, n0:] == 7).all() and (b["labels"][0, n0:] == IGNORE_INDEX).all()
    assert b["attention_mask"][0].sum() == n0


def test_bundled_dataset_matches_its_generator():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "make_bundled_dataset.py"
    assert subprocess.run([sys.executable, str(script), "--check"]).returncode == 0
