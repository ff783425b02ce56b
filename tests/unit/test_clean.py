"""Cleaning rules and their counts, from a JSONL file to tokenized splits."""
import json

import pytest
from omegaconf import OmegaConf

from shardtune.config import ColumnsConfig, DataConfig
from shardtune.data import build
from shardtune.errors import DataError


def tokenized_splits(cfg, tokenizer, seq_len, seed):
    prepared = build(cfg, tokenizer, seq_len, seed)
    return prepared.train, prepared.validation, prepared.report

ROWS = [
    {"instruction": "Reverse.", "input": "abc", "output": "cba"},
    {"instruction": "  ", "input": "", "output": "x"},             # empty instruction
    {"instruction": "Reverse.", "input": "abc", "output": "cba"},  # repeat of row 1
    {"instruction": "Upper.", "input": "ab", "output": "\n\t"},    # whitespace-only output
    {"instruction": "Reverse.", "input": "xyz", "output": "zyx"},
    {"instruction": "Tell a long story.", "input": "", "output": "once upon a time " * 20},
]


def data_cfg(tmp_path, rows, **fields):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return OmegaConf.structured(DataConfig(name="test", path=str(path), val_fraction=0.0, **fields))


def test_counts_of_each_rule_and_what_is_kept(tmp_path, tokenizer):
    train, val, report = tokenized_splits(data_cfg(tmp_path, ROWS), tokenizer, seq_len=64, seed=0)
    assert report["rows_read"] == 6 and report["dropped_empty"] == 2 and report["dropped_duplicates"] == 1
    assert report["train_truncated"] == 1 and report["train_dropped_too_long"] == 0
    assert report["train_rows"] == len(train) == 3 and len(val) == 0
    assert max(len(row) for row in train["input_ids"]) == 64
    assert "truncated" not in train.column_names


def test_drop_too_long_and_keep_duplicates(tmp_path, tokenizer):
    cfg = data_cfg(tmp_path, ROWS, too_long="drop", drop_duplicates=False)
    train, _, report = tokenized_splits(cfg, tokenizer, seq_len=64, seed=0)
    assert "dropped_duplicates" not in report  # the rule is off
    assert report["train_dropped_too_long"] == 1 and report["train_truncated"] == 0
    assert len(train) == 3  # rows 1, 3 (the repeat) and 5
    assert all(len(row) <= 64 for row in train["input_ids"])


def test_nothing_left_after_cleaning_names_the_file(tmp_path, tokenizer):
    cfg = data_cfg(tmp_path, [{"instruction": " ", "output": "x"}, {"instruction": "a", "output": ""}])
    with pytest.raises(DataError, match=r"data.path: no rows of .*rows.jsonl are left after cleaning"):
        tokenized_splits(cfg, tokenizer, seq_len=64, seed=0)


def test_no_row_fits_with_drop_names_seq_len(tmp_path, tokenizer):
    cfg = data_cfg(tmp_path, ROWS[-1:], too_long="drop")
    with pytest.raises(ValueError, match=r"train.seq_len=16 with data.too_long=drop"):
        tokenized_splits(cfg, tokenizer, seq_len=16, seed=0)


def test_bundled_data_is_clean(tokenizer):
    from conftest import compose_cfg
    cfg = compose_cfg("data=tiny_instruct").data  # the preset holds out 10% for validation and 10% for test
    _, _, report = tokenized_splits(cfg, tokenizer, seq_len=256, seed=42)
    assert report["rows_read"] == 2000 and report["dropped_empty"] == 0 and report["dropped_duplicates"] == 0
    assert report["train_rows"] + report["validation_rows"] + report["test_rows"] == 2000
    assert report["validation_rows"] == report["test_rows"] == 200


def test_column_mapping_reads_other_field_names(tmp_path, tokenizer):
    rows = [{"question": "Add.", "context": "2+2", "answer": "4"}, {"question": "Add.", "answer": "7"}]
    cfg = data_cfg(tmp_path, rows, columns=ColumnsConfig(instruction="question", input="context", output="answer"))
    train, _, report = tokenized_splits(cfg, tokenizer, seq_len=64, seed=0)
    assert report["train_rows"] == 2
    texts = sorted(tokenizer.decode(ids) for ids in train["input_ids"])
    assert "Instruction: Add.\nInput: 2+2\nResponse:\n4</s>" in texts
    assert "Instruction: Add.\nResponse:\n7</s>" in texts  # no context: the template without input


def test_a_missing_mapped_field_names_the_file_line_and_key(tmp_path):
    cfg = data_cfg(tmp_path, [{"question": "Add.", "answer": "4"}, {"question": "Add."}],
                   columns=ColumnsConfig(instruction="question", output="answer"))
    with pytest.raises(DataError, match=r"rows.jsonl:2: field 'answer' \(data.columns.output\) is missing"):
        build(cfg, None, seq_len=64, seed=0)


def test_columns_map_only_the_formats_fields():
    from conftest import compose_cfg
    from shardtune.errors import ConfigError
    from shardtune.launcher.validation import validate
    cfg = compose_cfg(values={"data.columns": ColumnsConfig(messages="question")})
    with pytest.raises(ConfigError, match=r"data.columns: format alpaca maps only instruction, input, output, system, "
                                          r"history; got \['messages'\]"):
        validate(cfg, "cpu", 2)
