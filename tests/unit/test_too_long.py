"""Rows longer than train.seq_len (data.too_long: truncate, keep_response, drop, split), the refusal of data that
truncation leaves with nothing to train, and plain .txt files as completion text (shardtune/data/tokenize.py,
pipeline.py, packing.py, sources.py)."""
import copy
import json
import math

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg, run_shardtune
from shardtune.config import DataConfig, DataSourceConfig, asset_path
from shardtune.data import build
from shardtune.data.formats import format_prompt
from shardtune.data.preview import format_preview
from shardtune.data.tokenize import IGNORE_INDEX, keep_response
from shardtune.errors import ConfigError, DataError
from shardtune.launcher.validation import validate

LONG_INSTRUCTION = "Read the following request with great care and then answer it briefly. "  # 72 bytes


@pytest.fixture(scope="module")
def llama_like(tokenizer):
    """The tiny tokenizer starting every text with BOS (257), as Llama's do."""
    from tokenizers.processors import TemplateProcessing
    bos_first = copy.deepcopy(tokenizer)
    bos_first.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 257)])
    return bos_first


def data_cfg(tmp_path, rows, **fields):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return OmegaConf.structured(DataConfig(name="t", path=str(path), val_fraction=0.0, **fields))


def trained(row) -> list:
    return [label for label in row["labels"] if label != IGNORE_INDEX]


# Data that truncation leaves with nothing to train.

def test_data_that_loses_every_trained_token_is_refused_naming_seq_len_prompt_and_rows(tmp_path, tokenizer):
    rows = [{"instruction": LONG_INSTRUCTION + str(i), "input": "", "output": "yes"} for i in range(5)]
    longest_prompt = len(format_prompt(rows[0]["instruction"], "").encode())  # one token per byte
    with pytest.raises(DataError) as error:
        build(data_cfg(tmp_path, rows), tokenizer, seq_len=32, seed=0)
    message = str(error.value)
    assert message.startswith("train.seq_len=32: all 5 training rows of ")
    assert f"up to {longest_prompt} tokens" in message
    assert "data.too_long=keep_response" in message and "a larger train.seq_len" in message
    # keep_response trains the same data
    prepared = build(data_cfg(tmp_path, rows, too_long="keep_response"), tokenizer, seq_len=32, seed=0)
    assert all(trained(row) == list(b"yes") + [tokenizer.eos_token_id] for row in prepared.train)


def test_the_launcher_refuses_it_before_any_worker_starts(tmp_path):
    rows = [{"instruction": LONG_INSTRUCTION + str(i), "input": "", "output": "yes"} for i in range(8)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_shardtune("train", "model=tiny", f"data.path={tmp_path / 'rows.jsonl'}", "train.seq_len=32",
                           "train.max_steps=2", "data.val_fraction=0", "data.test_fraction=0",
                           f"data.cache_dir={tmp_path / 'cache'}",
                           f"output_dir={tmp_path / 'run'}", check=False)
    assert result.returncode != 0
    assert "shardtune: data error: train.seq_len=32: all 8 training rows of" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_partial_loss_is_a_counted_warning(tmp_path, tokenizer, caplog):
    rows = [{"instruction": LONG_INSTRUCTION + str(i), "input": "", "output": "yes"} for i in range(2)]
    rows += [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(3)]
    prepared = build(data_cfg(tmp_path, rows), tokenizer, seq_len=32, seed=0)
    assert prepared.report["train_no_trained_tokens"] == 2 and prepared.report["train_truncated"] == 2
    assert "2 of 5 train rows of" in caplog.text and "have no trained tokens left" in caplog.text
    assert "data.too_long=keep_response" in caplog.text


def test_a_held_out_split_that_loses_its_tokens_only_warns(tmp_path, tokenizer, caplog):
    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(4)]
    cfg = data_cfg(tmp_path, rows + [{"instruction": LONG_INSTRUCTION, "input": "", "output": "yes"}])
    cfg.test_fraction = 0.2  # one row held out; with seed 3 it is the long one
    prepared = build(cfg, tokenizer, seq_len=32, seed=3)
    assert prepared.report["test_no_trained_tokens"] == 1 and prepared.report["train_rows"] == 4
    assert "1 of 1 test rows" in caplog.text


# keep_response.

def test_keep_response_budget():
    def cut(context, response, seq_len, head=1):
        ids = list(range(head + context + response))
        kept, _ = keep_response(ids, ids, head + context, head, seq_len)
        assert len(kept) == min(seq_len, len(ids)) and kept[:head] == ids[:head]
        kept_context = [i for i in kept[head:] if i < head + context]
        assert kept_context == ids[head + context - len(kept_context):head + context]  # its newest tokens
        return len(kept_context), len(kept) - head - len(kept_context)

    assert cut(context=40, response=5, seq_len=33) == (27, 5)    # a short response is kept whole
    assert cut(context=10, response=100, seq_len=33) == (10, 22)  # a short prompt too; the response loses its end
    assert cut(context=40, response=100, seq_len=33) == (16, 16)  # both long: the prompt keeps half the room
    assert cut(context=40, response=100, seq_len=33, head=0) == (16, 17)


def test_keep_response_shortens_the_prompt_from_its_oldest_end_and_keeps_bos(tmp_path, llama_like):
    row = {"instruction": LONG_INSTRUCTION, "input": "", "output": "the answer"}
    prepared = build(data_cfg(tmp_path, [row], too_long="keep_response"), llama_like, seq_len=32, seed=0)
    assert prepared.report["train_truncated"] == 1
    example = prepared.train[0]
    prompt, response = list(format_prompt(row["instruction"], "").encode()), list(b"the answer") + [258]
    assert example["input_ids"] == [257] + prompt[-(31 - len(response)):] + response
    assert example["labels"] == [IGNORE_INDEX] * (32 - len(response)) + response
    shown = format_preview(prepared, llama_like, "train", 1)
    assert f"«<s>{bytes(prompt[-20:]).decode()}»the answer</s>" in shown


def test_keep_response_keeps_the_last_assistant_turn_of_a_chat(tmp_path, tokenizer):
    turns = [{"role": "user", "content": LONG_INSTRUCTION}, {"role": "assistant", "content": "first"},
             {"role": "user", "content": "and again?"}, {"role": "assistant", "content": "second"}]
    prepared = build(data_cfg(tmp_path, [{"messages": turns}], format="chat", too_long="keep_response"),
                     tokenizer, seq_len=56, seed=0)
    example = prepared.train[0]
    full = tokenizer(tokenizer.apply_chat_template(turns, tokenize=False), add_special_tokens=False)["input_ids"]
    # The last response (8 tokens) is short, so it stays whole and the context keeps its newest 48 tokens,
    # which still hold the first answer.
    assert len(full) > 100 and example["input_ids"] == full[-56:]
    assert tokenizer.decode(example["input_ids"]).endswith("first</s>\n<|user|>\nand again?</s>\n<|assistant|>\nsecond</s>\n")
    assert tokenizer.decode(trained(example)) == "first</s>\nsecond</s>\n"


# split (completion text).

def test_split_cuts_a_long_text_into_trained_chunks_and_loses_nothing(tmp_path, llama_like):
    text = "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals."
    rows = [{"text": text}, {"text": "short"}]
    prepared = build(data_cfg(tmp_path, rows, format="completion", too_long="split"), llama_like, seq_len=16, seed=0)
    num_tokens = 1 + len(text.encode()) + 1  # BOS, the text, EOS
    num_chunks = math.ceil(num_tokens / 16)
    assert len(prepared.train) == num_chunks + 1
    chunks = prepared.train.select(range(num_chunks))
    assert all(len(ids) == 16 for ids in chunks["input_ids"][:-1])
    assert sum(chunks["input_ids"], []) == [257] + list(text.encode()) + [258]
    assert sum(chunks["labels"], []) == [IGNORE_INDEX] + list(text.encode()) + [258]  # all trained but BOS
    assert prepared.train[num_chunks]["input_ids"] == [257] + list(b"short") + [258]
    report = prepared.report
    assert (report["train_split_rows"], report["train_split_chunks"], report["train_truncated"]) == (1, num_chunks, 0)


def test_split_with_packing_concatenates_the_texts_and_chunks_them(tmp_path, tokenizer):
    texts = ["a" * 40, "b" * 10, "c" * 20]
    cfg = data_cfg(tmp_path, [{"text": t} for t in texts], format="completion", too_long="split", packing=True)
    prepared = build(cfg, tokenizer, seq_len=16, seed=0)
    stream = [token for t in texts for token in list(t.encode()) + [258]]  # each text ends in EOS
    rows = prepared.train
    assert len(rows) == math.ceil(len(stream) / 16) == prepared.report["packed_train_rows"]
    assert all(len(ids) == 16 for ids in rows["input_ids"][:-1])
    assert sum(rows["input_ids"], []) == stream
    # Attention and loss stay within each text: positions restart where one begins, and no token of the text
    # before is trained to predict its first token.
    positions, labels = sum(rows["position_ids"], []), sum(rows["labels"], [])
    starts = [0, 41, 52]
    assert [i for i, p in enumerate(positions) if p == 0] == sorted(set(starts) | set(range(0, len(stream), 16)))
    assert [i for i, label in enumerate(labels) if label == IGNORE_INDEX] == starts
    assert prepared.report["train_split_rows"] == 2  # the texts longer than seq_len


def test_split_is_for_completion_and_too_long_values_are_checked():
    with pytest.raises(ConfigError, match="split cuts plain text into chunks, for format=completion; data.format is "
                                          "alpaca") as error:
        validate(compose_cfg(values={"data.too_long": "split"}), "cpu", 2)
    assert error.value.key == "data.too_long"
    mix = [DataSourceConfig(path=asset_path("data/tiny_instruct.jsonl"), format="chat")]
    with pytest.raises(ConfigError, match="data.mix.0.format is chat"):
        validate(compose_cfg(values={"data.too_long": "split", "data.path": None, "data.mix": mix}), "cpu", 2)
    with pytest.raises(ConfigError, match="expected one of truncate, keep_response, drop, split, got 'cut'"):
        validate(compose_cfg(values={"data.too_long": "cut"}), "cpu", 2)


def test_truncated_completion_text_suggests_split(tmp_path, tokenizer, caplog):
    build(data_cfg(tmp_path, [{"text": "x" * 40}, {"text": "y"}], format="completion"), tokenizer, 16, 0)
    assert "1 of 2 training texts of" in caplog.text and "data.too_long=split" in caplog.text


# .txt files.

def test_a_txt_file_is_one_completion_row(tmp_path, tokenizer):
    story = "Chapter one.\nIt began.\n\nChapter two.\nIt went on.\n"
    (tmp_path / "story.txt").write_text(story)
    cfg = OmegaConf.structured(DataConfig(name="t", path=str(tmp_path / "story.txt"), format="completion",
                                          val_fraction=0.0, too_long="split"))
    prepared = build(cfg, tokenizer, seq_len=16, seed=0)
    assert prepared.report["rows_read"] == 1
    assert sum(prepared.train["input_ids"], []) == list(story.encode()) + [258]


def test_a_directory_of_txt_files_keeps_its_splits_and_txt_notes_beside_data_are_left_out(tmp_path, tokenizer):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in [("train-1.txt", "first book"), ("train-2.txt", "second book"), ("validation.txt", "held")]:
        (corpus / name).write_text(text)
    cfg = OmegaConf.structured(DataConfig(name="t", path=str(corpus), format="completion"))
    prepared = build(cfg, tokenizer, seq_len=64, seed=0)
    assert sorted(tokenizer.decode(ids) for ids in prepared.train["input_ids"]) == ["first book</s>", "second book</s>"]
    assert [tokenizer.decode(ids) for ids in prepared.validation["input_ids"]] == ["held</s>"]
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    (jsonl / "rows.jsonl").write_text(json.dumps({"text": "a row"}) + "\n")
    (jsonl / "README.txt").write_text("how these rows were made")
    cfg = OmegaConf.structured(DataConfig(name="t", path=str(jsonl), format="completion", val_fraction=0.0))
    assert [tokenizer.decode(ids) for ids in build(cfg, tokenizer, 64, 0).train["input_ids"]] == ["a row</s>"]


def test_txt_files_in_another_format_say_to_set_completion(tmp_path, tokenizer):
    (tmp_path / "notes.txt").write_text("plain text")
    cfg = OmegaConf.structured(DataConfig(name="t", path=str(tmp_path / "notes.txt")))
    with pytest.raises(DataError, match=r"data.format: .*notes.txt holds .txt files, which are plain text \(one "
                                        r"completion row per file\), but the format is alpaca; set data.format=completion"):
        build(cfg, tokenizer, 64, 0)
