"""Bad input never escapes as a traceback: each data error is one line naming the file and line (or the config key),
raised in the launcher before torchrun starts; data.on_bad_row=skip leaves malformed rows out and counts them
(shardtune/data/segments.py BadRows, formats.py, chat.py, sources.py, launcher/validation.py)."""

import pandas as pd
import pytest
import torch

from conftest import compose_cfg, run_shardtune
from data_helpers import data_cfg, write_jsonl
from shardtune.data import build
from shardtune.errors import ConfigError, DataError
from shardtune.launcher.launch import prepare_run
from shardtune.launcher.validation import validate, validate_split_sizes

GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def one_line_error(call) -> str:
    with pytest.raises(DataError) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_text_that_is_not_utf8_names_the_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n\n{"instruction": "caf\xe9", "output": "b"}\n')
    message = one_line_error(lambda: build(data_cfg(path), tokenizer, 64, 0))
    assert message == f"{path}:3: not UTF-8 text (byte 0xe9); save the file as UTF-8"
    csv = tmp_path / "rows.csv"
    csv.write_bytes(b"instruction,output\nSay,hi\nna\xefve,b\n")
    assert one_line_error(lambda: build(data_cfg(csv), tokenizer, 64, 0)).startswith(f"{csv}:3: not UTF-8 text")


@pytest.mark.parametrize("row, problem", [
    ({"messages": []}, "field 'messages' must be a non-empty list of {role, content}"),
    ({"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]},
     "field 'messages' starts with an assistant turn (turn 1); a conversation starts with a user turn"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "S"},
                   {"role": "assistant", "content": "yo"}]}, "turn 2 is a system turn after the conversation began"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"},
                   {"role": "assistant", "content": "yo"}]}, "turn 2 is a tool result after a user turn"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": "{bad"}]},
     "turn 2: 'tool_calls' is not valid JSON"),
    ({**GOOD_CHAT, "tools": "[{oops"}, "field 'tools' is not valid JSON"),
    ({**GOOD_CHAT, "tools": [{"description": "no name"}]}, "field 'tools' tool 1 needs a name"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "train": "yes"}]},
     "turn 2: 'train' must be true or false, got 'yes'"),
    ({**GOOD_CHAT, "system": "A"} | {"messages": [{"role": "system", "content": "B"}] + GOOD_CHAT["messages"]},
     "field 'system' differs from the conversation's own system turn"),
])
def test_a_malformed_conversation_is_one_line_naming_file_line_and_problem(tmp_path, tokenizer, row, problem):
    path = write_jsonl(tmp_path / "chat.jsonl", [GOOD_CHAT, row])
    message = one_line_error(lambda: build(data_cfg(path, format="chat"), tokenizer, 64, 0))
    assert message.startswith(f"{path}:2: ") and problem in message, message
    assert message.endswith("(data.on_bad_row=skip leaves such rows out)")


@pytest.mark.parametrize("fmt, row, problem", [
    ("alpaca", {"instruction": "a", "output": "b", "history": [["only one"]]},
     "field 'history' must be a list of [instruction, response] pairs"),
    ("segments", {"segments": [{"text": "x"}]}, "segment 1 needs 'label': true to train on it, false to mask it"),
    ("segments", {"segments": [{"text": 3, "label": True}]}, "segment 1 needs a string 'text'"),
])
def test_malformed_rows_of_the_other_formats(tmp_path, tokenizer, fmt, row, problem):
    path = write_jsonl(tmp_path / "rows.jsonl", [row])
    message = one_line_error(lambda: build(data_cfg(path, format=fmt), tokenizer, 64, 0))
    assert message.startswith(f"{path}:1: ") and problem in message, message


STRICT = ("{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{{ m.role }}: {{ m.content }}{{ eos_token }}{% endfor %}"
          "{% if add_generation_prompt %}assistant: {% endif %}")
TWO_USER_TURNS = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                               {"role": "assistant", "content": "c"}]}


def test_a_conversation_the_template_refuses_names_its_line_after_splitting(tmp_path, tokenizer):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(6)]
    path = write_jsonl(tmp_path / "chat.jsonl", rows[:4] + [TWO_USER_TURNS] + rows[4:])  # line 5
    cfg = data_cfg(path, format="chat", chat_template=STRICT, val_fraction=0.3, test_fraction=0.2)
    message = one_line_error(lambda: build(cfg, tokenizer, 64, 0))
    assert message.startswith(f"{path}:5: the chat template refuses this conversation: Conversation roles must "
                              "alternate"), message


def test_skip_leaves_bad_rows_out_counts_them_and_logs_where(tmp_path, tokenizer, caplog):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(5)]
    lines = rows[:2] + [{"messages": []}] + rows[2:4] + [TWO_USER_TURNS, "", rows[4]]  # bad: lines 3 and 6
    path = write_jsonl(tmp_path / "chat.jsonl", lines)
    prepared = build(data_cfg(path, format="chat", chat_template=STRICT, on_bad_row="skip"), tokenizer, 64, 0)
    assert prepared.report["rows_read"] == 7 and prepared.report["skipped_bad_rows"] == 2
    assert prepared.report["train_rows"] == 5
    assert prepared.report["train_dropped_too_long"] == 0  # skipped rows are not counted as too long
    assert f"{path}:3: field 'messages' must be a non-empty list" in caplog.text
    assert f"{path}:6: the chat template refuses this conversation" in caplog.text
    assert "skipped 2 malformed row(s)" in caplog.text
    all_bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": []}, {"messages": [{"role": "gpt", "content": "x"}]}])
    message = one_line_error(lambda: build(data_cfg(all_bad, format="chat", on_bad_row="skip"), tokenizer, 64, 0))
    assert "no rows of" in message and "skipped_bad_rows': 2" in message
    refused = write_jsonl(tmp_path / "refused.jsonl", [TWO_USER_TURNS])
    message = one_line_error(lambda: build(data_cfg(refused, format="chat", chat_template=STRICT, on_bad_row="skip"),
                                           tokenizer, 64, 0))
    assert message.startswith("data.on_bad_row: every training row of") and f"{refused}:1: the chat template" in message


def test_a_bad_parquet_row_is_skipped_by_row_number(tmp_path, tokenizer, caplog):
    path = tmp_path / "rows.parquet"
    pd.DataFrame([{"instruction": "a", "output": "b"}, {"instruction": None, "output": "c"},
                  {"instruction": "d", "output": "e"}]).to_parquet(path)
    prepared = build(data_cfg(path, on_bad_row="skip"), tokenizer, 64, 0)
    assert prepared.report["skipped_bad_rows"] == 1 and prepared.report["train_rows"] == 2
    assert f"{path} row 2: field 'instruction' is missing" in caplog.text


@pytest.mark.parametrize("values, key, message", [
    ({"data.train_on_roles": ["assistant", "bot"]}, "data.train_on_roles", r"unknown role\(s\) \['bot'\]"),
    ({"data.train_on_eos": "all"}, "data.train_on_eos", "expected one of turn, last, none"),
    ({"data.on_bad_row": "ignore"}, "data.on_bad_row", "expected error or skip"),
])
def test_new_data_settings_are_checked_naming_the_key(values, key, message):
    with pytest.raises(ConfigError, match=message) as error:
        validate(compose_cfg(values=values), "cpu", 2)
    assert error.value.key == key


# The training split against the micro-batch, before torchrun.

def test_split_sizes_against_the_micro_batch_and_grad_accum():
    train = compose_cfg().train
    train.micro_batch_size, train.grad_accum = 4, 1
    validate_split_sizes(train, 8, 2)
    with pytest.raises(ConfigError, match=r"4 rows per micro-batch on each of 2 rank\(s\) needs at least 8 training "
                                          r"rows, but the train split has 7") as error:
        validate_split_sizes(train, 7, 2)
    assert error.value.key == "train.micro_batch_size"
    train.grad_accum = 3
    with pytest.raises(ConfigError, match=r"each of 2 rank\(s\) only 2 micro-batch\(es\) of 4") as error:
        validate_split_sizes(train, 16, 2)
    assert error.value.key == "train.grad_accum"


def test_the_launcher_refuses_a_split_too_small_before_writing_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_jsonl(tmp_path / "rows.jsonl", [{"instruction": f"Say {i}.", "output": str(i)} for i in range(6)])
    cfg = compose_cfg(values={"data.path": str(path), "data.val_fraction": 0.0, "data.test_fraction": 0.0,
                              "data.cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run"),
                              "train.micro_batch_size": 4, "launcher.cpu_workers": 2})
    with pytest.raises(ConfigError, match=r"needs at least 8 training rows, but the train split has 6"):
        prepare_run(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_the_cli_prints_one_line_and_starts_no_worker(tmp_path, fast_overrides):
    bad = write_jsonl(tmp_path / "chat.jsonl", [GOOD_CHAT, {"messages": [{"role": "gpt", "content": "hi"}]}])
    result = run_shardtune("train", *fast_overrides, f"data.path={bad}", "data.format=chat",
                           f"data.cache_dir={tmp_path / 'c'}", f"output_dir={tmp_path / 'run'}", check=False)
    assert result.returncode != 0
    assert f"shardtune: data error: {bad}:2: field 'messages' starts with an assistant turn" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "config.yaml").exists()
