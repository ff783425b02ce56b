"""Sources, formats, splits and mixing (shardtune/data/sources.py, formats.py, pipeline.py), and every bad
input the pipeline must name: file and line, field, or config key."""
import copy
import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from data_helpers import data_cfg, write_jsonl
from shardtune.config import ColumnsConfig, DataConfig, DataSourceConfig, asset_path
from shardtune.data import build
from shardtune.errors import DataError
from shardtune.data.formats import BUILTIN_CHAT_TEMPLATE
from shardtune.data.sources import load_source
from shardtune.data.tokenize import IGNORE_INDEX

ALPACA = [{"instruction": "Reverse.", "input": "abc", "output": "cba"},
          {"instruction": "Double 2.", "input": "", "output": "4"},
          {"instruction": "Upper.", "input": "xy", "output": "XY"}]
CHAT = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again"},
                      {"role": "assistant", "content": "ok"}]}]


def trained_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX])


# Sources: file types, directories, the dataset's own splits.

WRITERS = {
    "jsonl": lambda path, rows: write_jsonl(path, rows),
    "json": lambda path, rows: path.write_text(json.dumps(rows, indent=1)),
    "parquet": lambda path, rows: pd.DataFrame(rows).to_parquet(path),
    "csv": lambda path, rows: pd.DataFrame(rows).to_csv(path, index=False),
}


@pytest.mark.parametrize("kind", WRITERS)
def test_every_file_type_gives_the_same_rows(tmp_path, tokenizer, kind):
    path = tmp_path / f"rows.{kind}"
    WRITERS[kind](path, ALPACA)
    reference = build(data_cfg(write_jsonl(tmp_path / "ref.jsonl", ALPACA)), tokenizer, 64, seed=0)
    prepared = build(data_cfg(path), tokenizer, 64, seed=0)
    assert prepared.train["input_ids"] == reference.train["input_ids"]
    assert prepared.train["labels"] == reference.train["labels"]


def test_a_directory_with_its_own_splits_keeps_them(tmp_path, tokenizer):
    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(30)]
    write_jsonl(tmp_path / "train.jsonl", rows[:20])
    write_jsonl(tmp_path / "dev.jsonl", rows[20:25])  # datasets' naming: dev/valid/val -> validation
    write_jsonl(tmp_path / "test.jsonl", rows[25:])
    prepared = build(data_cfg(tmp_path, val_fraction=0.3, test_fraction=0.3), tokenizer, 64, seed=0)
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (20, 5, 5)
    assert [tokenizer.decode(ids) for ids in prepared.test["prompt_ids"]][0] == "Instruction: Say 25.\nResponse:\n"
    assert prepared.test["reference"] == ["25", "26", "27", "28", "29"]
    carved = build(data_cfg(tmp_path, val_fraction=0.1, test_fraction=0.1, use_dataset_splits=False), tokenizer, 64, 0)
    assert (len(carved.train), len(carved.validation), len(carved.test)) == (24, 3, 3)
    only_test = build(data_cfg(tmp_path, split="test"), tokenizer, 64, seed=0)
    assert len(only_test.train) == 5


def test_missing_splits_are_carved_from_train(tmp_path, tokenizer):
    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(40)]
    write_jsonl(tmp_path / "train.jsonl", rows[:30])
    write_jsonl(tmp_path / "test.jsonl", rows[30:])
    prepared = build(data_cfg(tmp_path, val_fraction=0.1, test_fraction=0.5), tokenizer, 64, seed=0)
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (27, 3, 10)


# Formats.

def test_chat_trains_assistant_turns_only_with_the_tokenizers_template(tmp_path, tokenizer):
    row = build(data_cfg(write_jsonl(tmp_path / "chat.jsonl", CHAT), format="chat"), tokenizer, 256, 0).train[0]
    text = tokenizer.decode(row["input_ids"])
    assert text == tokenizer.apply_chat_template(CHAT[0]["messages"], tokenize=False)
    # Each assistant turn with its end of turn; headers, system and user turns masked.
    assert trained_text(tokenizer, row) == "yo</s>\nok</s>\n"


def test_chat_uses_the_built_in_template_when_the_tokenizer_has_none(tmp_path, tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    row = build(data_cfg(write_jsonl(tmp_path / "chat.jsonl", CHAT), format="chat"), bare, 256, 0).train[0]
    assert tokenizer.decode(row["input_ids"]).startswith("<|system|>\nBe brief.\n<|user|>\nhi\n<|assistant|>\nyo</s>")
    assert trained_text(tokenizer, row) == "yo</s>\nok</s>\n"
    unmasked = build(data_cfg(tmp_path / "chat.jsonl", format="chat", mask_prompt=False), bare, 256, 0).train[0]
    assert unmasked["labels"] == unmasked["input_ids"]


def test_chat_template_from_the_config_and_a_template_that_cannot_be_split(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    custom = BUILTIN_CHAT_TEMPLATE.replace("<|", "[").replace("|>", "]")
    row = build(data_cfg(path, format="chat", chat_template=custom), tokenizer, 256, 0).train[0]
    assert tokenizer.decode(row["input_ids"]).startswith("[system]\nBe brief.")
    # A template that puts the number of turns first: earlier renderings are no prefix of later ones (from turn 2).
    counting = "{{ messages | length }}" + BUILTIN_CHAT_TEMPLATE
    with pytest.raises(DataError, match=r"data.chat_template: .* turn by turn \(turn 2\)"):
        build(data_cfg(path, format="chat", chat_template=counting), tokenizer, 256, 0)


def test_completion_trains_all_text_and_ends_with_eos(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "text.jsonl", [{"body": "plain text"}, {"body": "  "}])
    prepared = build(data_cfg(path, format="completion", columns=ColumnsConfig(text="body")), tokenizer, 64, 0)
    assert prepared.report["dropped_empty"] == 1
    assert prepared.train[0]["input_ids"] == list(b"plain text") + [tokenizer.eos_token_id]
    assert prepared.train[0]["labels"] == prepared.train[0]["input_ids"]


def test_sharegpt_style_chat_through_column_mapping(tmp_path, tokenizer):
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    cfg = data_cfg(write_jsonl(tmp_path / "sg.jsonl", rows), format="chat",
                   columns=ColumnsConfig(messages="conversations", role="from", content="value"))
    row = build(cfg, tokenizer, 64, 0).train[0]
    assert tokenizer.decode(row["input_ids"]) == "<|user|>\nhi</s>\n<|assistant|>\nyo</s>\n"


# Mixing.

def test_mixing_weights_training_rows_but_not_held_out_ones(tmp_path, tokenizer):
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"Say {i}.", "output": str(i)} for i in range(20)])
    chats = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
             for i in range(10)]
    chat = write_jsonl(tmp_path / "c.jsonl", chats)
    cfg = OmegaConf.structured(DataConfig(name="mix", val_fraction=0.1, test_fraction=0.1, mix=[
        DataSourceConfig(path=str(alpaca), weight=2.0), DataSourceConfig(path=str(chat), format="chat", weight=0.5)]))
    prepared = build(cfg, tokenizer, 64, seed=0)
    assert prepared.report["a/rows_read"] == 20 and prepared.report["c/rows_read"] == 10
    assert len(prepared.train) == 16 * 2 + 4  # 16 alpaca rows twice, half of the 8 chat rows
    assert len(prepared.validation) == 2 + 1 and len(prepared.test) == 2 + 1
    assert sorted(prepared.test["reference"]) == sorted(prepared.test["reference"])  # both formats have answers
    again = build(cfg, tokenizer, 64, seed=0)
    assert again.train["input_ids"] == prepared.train["input_ids"]


# Bad input.

GOOD = json.dumps(ALPACA[0])


@pytest.mark.parametrize("bad_line, reason", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"output": "x"}', "field 'instruction' is missing"),
    ('{"instruction": "x"}', "field 'output' is missing"),
    ('{"instruction": 3, "output": "x"}', "field 'instruction' is int here but str on line 1"),
    ('{"instruction": "x", "output": ["x"]}', "field 'output' is list here but str on line 1"),
])
def test_a_bad_row_is_named_by_file_and_line(tmp_path, tokenizer, bad_line, reason):
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD, "", bad_line, GOOD])
    with pytest.raises(DataError) as error:
        build(data_cfg(path), tokenizer, 64, 0)
    assert f"{path}:3" in str(error.value) and reason in str(error.value)


@pytest.mark.parametrize("row, reason", [
    ({"messages": []}, "must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "has no assistant turn"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "turn 1 has unknown role 'robot'"),
    ({"messages": [{"role": "user"}]}, "turn 1 needs 'role' and 'content'"),
    ({"text": "no messages"}, "missing required field 'messages'"),
])
def test_bad_chat_rows_are_named(tmp_path, tokenizer, row, reason):
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    with pytest.raises(DataError, match=reason) as error:
        build(data_cfg(path, format="chat"), tokenizer, 64, 0)
    assert f"{path}:1" in str(error.value)


def test_a_bad_parquet_row_is_named_by_file_and_row(tmp_path, tokenizer):
    path = tmp_path / "rows.parquet"
    pd.DataFrame(ALPACA + [{"instruction": None, "input": "", "output": "x"}]).to_parquet(path)
    with pytest.raises(DataError, match=rf"{path} row 4: field 'instruction' is missing"):
        build(data_cfg(path), tokenizer, 64, 0)


def test_empty_and_missing_paths(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"rows.jsonl is empty"):
        build(data_cfg(write_jsonl(tmp_path / "rows.jsonl", ["", " "])), tokenizer, 64, 0)
    with pytest.raises(DataError, match=r"nope.jsonl does not exist"):
        build(data_cfg(tmp_path / "nope.jsonl"), tokenizer, 64, 0)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"empty_dir holds no .jsonl, .json, .parquet, .csv or .txt files"):
        load_source(str(tmp_path / "empty_dir"))


def test_an_unreachable_hub_dataset_is_named(monkeypatch):
    import datasets

    def offline(*args, **kwargs):  # what the hub client raises without network, without waiting for it
        raise ConnectionError("Couldn't reach 'someone/instructions' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"cannot load hub dataset 'someone/instructions' \(subset None, split train, "
                                        r"revision v1\): Couldn't reach"):
        load_source("someone/instructions", split="train", revision="v1")


@pytest.mark.parametrize("values, key, message", [
    ({"data.format": "sharegpt"}, "data.format", "expected one of alpaca, chat, completion, segments, random_tokens"),
    ({"data.path": "/nonexistent/rows.jsonl"}, "data.path", "file or directory not found"),
    ({"data.path": None}, "data.path", "no dataset"),
    ({"data.test_fraction": 0.95}, "data.test_fraction", "no training rows left"),
    ({"data.format": "chat", "data.columns": ColumnsConfig(instruction="q")}, "data.columns",
     "format chat maps only messages"),
    ({"data.mix": [DataSourceConfig(path="/nonexistent/a.jsonl")]}, "data.path", "not both"),
    ({"data.path": None, "data.mix": [DataSourceConfig(path="/nonexistent/a.jsonl")]}, "data.mix.0.path", "not found"),
    ({"data.path": None, "data.mix": [DataSourceConfig(path=asset_path("data/tiny_instruct.jsonl"), weight=0.0)]},
     "data.mix.0.weight", "must be > 0"),
])
def test_config_errors_name_the_key(values, key, message):
    from conftest import compose_cfg
    from shardtune.errors import ConfigError
    from shardtune.launcher.validation import validate
    with pytest.raises(ConfigError, match=message) as error:
        validate(compose_cfg(values=values), "cpu", 2)
    assert error.value.key == key


def test_bos_is_added_where_the_tokenizer_adds_it_and_never_trained(tmp_path, tokenizer):
    from tokenizers.processors import TemplateProcessing
    llama_like = copy.deepcopy(tokenizer)  # starts every text with BOS, as Llama's tokenizers do
    llama_like.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 257)])
    assert llama_like("a")["input_ids"] == [257, 97]
    path = write_jsonl(tmp_path / "rows.jsonl", ALPACA)
    prepared = build(data_cfg(path, test_fraction=0.4), llama_like, 64, seed=0)
    row = prepared.train[0]
    assert row["input_ids"][0] == 257 and row["labels"][0] == IGNORE_INDEX
    assert row["input_ids"][1:] == build(data_cfg(path, test_fraction=0.4), tokenizer, 64, seed=0).train[0]["input_ids"]
    assert all(ids[0] == 257 for ids in prepared.test["prompt_ids"])  # generation starts as training did
    chat = build(data_cfg(write_jsonl(tmp_path / "chat.jsonl", CHAT), format="chat"), llama_like, 256, 0).train[0]
    assert chat["input_ids"][0] != 257  # a chat template writes its own BOS if it wants one
