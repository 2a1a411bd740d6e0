"""TRL's dataset formats (content parts, developer role, per-message weight, tools / tool_calls), files read through
``datasets`` (csv, parquet, arrow, save_to_disk), in-memory datasets, and LLaMA-Factory's dataset_info.json."""

from __future__ import annotations

import json

import pytest

import lorafam as lf
from lorafam.data.dataset import load_examples
from lorafam.data.encode import IGNORE_INDEX, encode
from lorafam.data.formats import DatasetError, normalise
from tests.train_support import write_jsonl

# A chat template written for this test that renders tools (in the system turn) and assistant tool calls.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}<call>{{ c['function']['name'] }}"
    "({{ c['function']['arguments'] | tojson }})</call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def tok():
    return lf.load_tokenizer()


def trained_text(tok, enc) -> str:
    return tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX])


def test_content_parts_are_joined_and_non_text_parts_refused(tok):
    rec = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        ]
    }
    ex = normalise(rec, "x")
    assert ex.messages[0]["content"] == "Hi there"
    assert trained_text(tok, encode(tok, ex, 256)) == "Hello<|im_end|>\n"
    rec["messages"][0]["content"].append({"type": "image", "image": "a.png"})
    with pytest.raises(DatasetError, match=r"x: messages\[0\]: content part 2 has type 'image'"):
        normalise(rec, "x")


def test_developer_role_is_the_system_turn(tok):
    ex = normalise(
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
            ]
        },  # fmt: skip
        "x",
    )
    assert ex.messages[0] == {"role": "system", "content": "Be brief."}
    assert "<|im_start|>system\nBe brief.<|im_end|>" in tok.decode(encode(tok, ex, 256).input_ids)


def test_weight_zero_turns_are_context_not_trained(tok):
    rec = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "weight": 0},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Ciao", "weight": 1},
        ]
    }
    enc = encode(tok, normalise(rec, "x"), 256)
    assert trained_text(tok, enc) == "Ciao<|im_end|>\n"  # before this change "Hello" was trained too
    assert "Hello" in tok.decode(enc.input_ids)
    everything = encode(tok, normalise(rec, "x"), 256, train_on_prompt=True)
    assert "Hello" not in trained_text(tok, everything)  # weight 0 wins over train_on_prompt
    with pytest.raises(DatasetError, match=r"messages\[1\].weight=0.5"):
        normalise({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b",
                                                                     "weight": 0.5}]}, "x")  # fmt: skip


def test_conversational_prompt_completion_trains_the_completion_only(tok):
    rec = {
        "prompt": [{"role": "user", "content": "1"}, {"role": "assistant", "content": "one"},
                   {"role": "user", "content": "2"}],
        "completion": [{"role": "assistant", "content": "two"}],
    }  # fmt: skip
    assert trained_text(tok, encode(tok, normalise(rec, "x"), 256)) == "two<|im_end|>\n"


def _tool_record():
    return {
        "messages": [
            {"role": "user", "content": "1+2?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
            {"role": "tool", "name": "add", "content": "3"},
            {"role": "assistant", "content": "It is 3."},
        ],
        "tools": TOOLS,
    }  # fmt: skip


def test_tools_and_tool_calls_go_through_a_template_that_renders_them(tmp_path):
    tok = lf.load_tokenizer()
    (tmp_path / "t.jinja").write_text(TOOLS_TEMPLATE)
    write_jsonl(tmp_path / "d.jsonl", [_tool_record()])
    (enc,), _ = load_examples([str(tmp_path / "d.jsonl")], tok, 512, template=str(tmp_path / "t.jinja"))
    text = tok.decode(enc.input_ids)
    assert 'Tools: [{"type": "function"' in text and "<call>add(" in text
    trained = trained_text(tok, enc)
    assert "<call>add(" in trained and "It is 3." in trained and "1+2?" not in trained and "Tools" not in trained


def test_tools_that_the_template_drops_are_refused_by_name(tok):
    ex = normalise(_tool_record(), "d.jsonl: line 1")
    with pytest.raises(DatasetError, match="d.jsonl: line 1: 'tools' are present but this tokenizer's chat"):
        encode(tok, ex, 512)
    rec = _tool_record()
    del rec["tools"]
    with pytest.raises(DatasetError, match="'tool_calls' are present but this tokenizer's chat template"):
        encode(tok, normalise(rec, "x"), 512)


@pytest.mark.parametrize("kind", ["csv", "parquet", "arrow", "save_to_disk"])
def test_files_read_through_datasets(tmp_path, tok, kind):
    datasets = pytest.importorskip("datasets")
    rows = [{"instruction": "Reverse:", "input": f"a{i} b{i}", "output": f"b{i} a{i}"} for i in range(3)]
    ds = datasets.Dataset.from_list(rows)
    path = tmp_path / ("d" if kind == "save_to_disk" else f"d.{kind}")
    if kind == "csv":
        ds.to_csv(str(path))
    elif kind == "parquet":
        ds.to_parquet(str(path))
    elif kind == "arrow":
        ds.save_to_disk(str(tmp_path / "saved"))
        path = next((tmp_path / "saved").glob("*.arrow"))
    else:
        ds.save_to_disk(str(path))
    examples, stats = load_examples([str(path)], tok, 128)
    assert stats.formats == {"alpaca": 3} and len(examples) == 3
    assert trained_text(tok, examples[1]) == "b1 a1<|im_end|>\n"


def test_an_in_memory_dataset_is_accepted(tok):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": f"A{i}"}]}
            for i in range(2)
        ]
    )
    examples, stats = load_examples([ds], tok, 64)
    assert stats.files == ["<Dataset>"] and [trained_text(tok, e) for e in examples] == [
        "A0<|im_end|>\n",
        "A1<|im_end|>\n",
    ]
    examples, _ = load_examples([[{"text": "hello"}]], tok, 64)  # a plain list of dicts works too
    assert trained_text(tok, examples[0]) == "hello" + tok.eos_token


# -- dataset_info.json ------------------------------------------------------------------------------------------
def _info(tmp_path, info: dict) -> None:
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))


def test_dataset_info_alpaca_columns_and_num_samples(tmp_path, tok):
    write_jsonl(tmp_path / "qa.jsonl", [{"q": f"Q{i}", "a": f"A{i}", "sys": "S"} for i in range(5)])
    _info(tmp_path, {"qa": {"file_name": "qa.jsonl", "num_samples": 3,
                            "columns": {"prompt": "q", "response": "a", "system": "sys"}}})  # fmt: skip
    examples, stats = load_examples(["qa"], tok, 128, dataset_dir=tmp_path)
    assert len(examples) == 3 and stats.formats == {"alpaca": 3}
    text = tok.decode(examples[0].input_ids)
    assert "<|im_start|>system\nS<|im_end|>" in text and trained_text(tok, examples[0]) == "A0<|im_end|>\n"


def test_dataset_info_pretraining_text_column(tmp_path, tok):
    write_jsonl(tmp_path / "c4.jsonl", [{"text": "one document"}])
    _info(tmp_path, {"c4_demo": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}}})
    (enc,), stats = load_examples(["c4_demo"], tok, 64, dataset_dir=tmp_path)
    assert stats.formats == {"text": 1} and trained_text(tok, enc) == "one document" + tok.eos_token


def test_dataset_info_sharegpt_tags_and_system_column(tmp_path, tok):
    rows = [{"chat": [{"who": "me", "say": "Hi"}, {"who": "bot", "say": "Yo"}], "sys": "Be kind."}]
    (tmp_path / "sg.json").write_text(json.dumps(rows))
    _info(tmp_path, {"sg": {"file_name": "sg.json", "formatting": "sharegpt",
                            "columns": {"messages": "chat", "system": "sys"},
                            "tags": {"role_tag": "who", "content_tag": "say", "user_tag": "me",
                                     "assistant_tag": "bot"}}})  # fmt: skip
    (enc,), stats = load_examples(["sg"], tok, 128, dataset_dir=tmp_path)
    assert stats.formats == {"sharegpt": 1}
    assert "<|im_start|>system\nBe kind.<|im_end|>" in tok.decode(enc.input_ids)
    assert trained_text(tok, enc) == "Yo<|im_end|>\n"
    rows[0]["chat"][0]["who"] = "alien"
    (tmp_path / "sg.json").write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match=r"chat\[0\].who='alien' is none of the tags"):
        load_examples(["sg"], tok, 128, dataset_dir=tmp_path)


def test_dataset_info_openai_formatting_and_a_folder(tmp_path, tok):
    (tmp_path / "oa").mkdir()
    write_jsonl(tmp_path / "oa" / "a.jsonl", [{"messages": [{"role": "user", "content": "Q"},
                                                            {"role": "assistant", "content": "A"}]}])  # fmt: skip
    write_jsonl(tmp_path / "oa" / "b.jsonl", [{"messages": [{"role": "user", "content": "R"},
                                                            {"role": "assistant", "content": "B"}]}])  # fmt: skip
    _info(tmp_path, {"oa": {"file_name": "oa", "formatting": "openai"}})
    examples, _ = load_examples(["oa"], tok, 128, dataset_dir=tmp_path)
    assert [trained_text(tok, e) for e in examples] == ["A<|im_end|>\n", "B<|im_end|>\n"]


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"hf_hub_url": "x/y"}, "'hf_hub_url' points at a remote dataset; lorafam downloads nothing"),
        ({"file_name": "d.json", "ranking": True}, "ranking: true is preference data"),
        ({"file_name": "d.json", "columns": {"images": "images"}}, "column 'images' is multimodal input"),
        ({"file_name": "d.json", "formatting": "xml"}, "formatting='xml'; expected alpaca, sharegpt or openai"),
        ({"file_name": "d.json", "colums": {}}, r"unknown keys \['colums'\]"),
    ],
)
def test_dataset_info_refusals_name_the_entry_and_key(tmp_path, tok, entry, match):
    _info(tmp_path, {"bad": entry})
    with pytest.raises(DatasetError, match=match):
        load_examples(["bad"], tok, 64, dataset_dir=tmp_path)


def test_an_undefined_name_lists_the_defined_ones(tmp_path, tok):
    _info(tmp_path, {"alpaca_en_demo": {"file_name": "a.json"}})
    with pytest.raises(
        DatasetError, match=r"'identity' is not a file and not defined in .*defined: alpaca_en_demo"
    ):
        load_examples(["identity"], tok, 64, dataset_dir=tmp_path)
    with pytest.raises(DatasetError, match="does not exist to look it up in"):
        load_examples(["identity"], tok, 64, dataset_dir=tmp_path / "nowhere")


def test_named_templates_use_the_tokenizers_own_with_a_note(tok):
    from lorafam.data.encode import set_template

    notes: list[str] = []
    assert set_template(lf.load_tokenizer(), "qwen3_nothink", notes) == "chat"
    assert "the tokenizer's own chat template is used" in notes[0]
    set_template(lf.load_tokenizer(), "llama3", notes)
    assert notes[1].startswith("warning: template 'llama3' names the llama3 format")
    bare = lf.load_tokenizer()
    bare.chat_template = None
    assert set_template(bare, "chatml", notes) == "chat" and "<|im_start|>" in bare.chat_template
    bare.chat_template = None
    with pytest.raises(DatasetError, match="ships only chatml"):
        set_template(bare, "llama3")
