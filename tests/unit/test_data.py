"""Unit tests of the shipped tiny tokenizer and data set, the split, alpaca tokenization with masking,
and batching (shardtune/data/pipeline.py, tokenize.py, batches.py)."""

import pytest
from datasets import Dataset

from shardtune.config import asset_path
from shardtune.data import Collator, ShardedBatches
from shardtune.data.formats import FORMATS, format_prompt, normalize
from shardtune.data.segments import BadRows
from shardtune.data.pipeline import split_rows
from shardtune.errors import DataError
from shardtune.data.sources import load_source
from shardtune.data.tokenize import IGNORE_INDEX, tokenize_split


def tokenize_rows(rows, tokenizer, seq_len, mask_prompt, too_long="truncate"):
    return tokenize_split(rows, FORMATS["alpaca"], tokenizer, seq_len, mask_prompt, too_long, chat_template=None)


def write_jsonl(tmp_path, lines):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def numbered_rows(num_rows):
    """Tokenized-looking rows whose first input id is the row number, so batches say which rows they hold."""
    return Dataset.from_list([{"input_ids": [i, 1, 2], "labels": [i, 1, 2]} for i in range(num_rows)])


def rows_in(batches):
    return [row_number for batch in batches for row_number in batch["input_ids"][:, 0].tolist()]


# The tiny tokenizer and data set.

def test_tiny_tokenizer_round_trips_bytes_and_has_fixed_special_ids(tokenizer):
    text = " Héllo,  wörld!\n\t23+45 = 68 ✓ 🙂 \x00"
    ids = tokenizer(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))  # one id per byte, nothing added
    assert tokenizer.decode(ids) == text
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (256, 257, 258)
    assert len(tokenizer) == 259 < 320  # fits the tiny model's vocab_size


def test_tiny_tokenizer_chat_template_tags_roles(tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|user|>\nhi</s>\n<|assistant|>\nyo</s>\n"


def test_tiny_data_loads_and_fits_short_sequences(tokenizer):
    raw = load_source(asset_path("data/tiny_instruct.jsonl"))["train"]
    ds = normalize(FORMATS["alpaca"], raw, {}, None, BadRows()).rows
    assert 1500 <= len(ds) <= 2500
    assert len(set(zip(ds["instruction"], ds["input"]))) == len(ds)  # unique rows: no train/val leaks
    tokenized = tokenize_rows(ds, tokenizer, seq_len=1024, mask_prompt=True)
    assert max(len(ids) for ids in tokenized["input_ids"]) <= 64


# split_rows.

def test_split_is_deterministic_disjoint_complete_and_keeps_row_order():
    ds = Dataset.from_list([{"n": i} for i in range(100)])
    train, val, test = (list(part["n"]) for part in split_rows(ds, 0.1, 0.2, seed=7))
    assert [list(part["n"]) for part in split_rows(ds, 0.1, 0.2, seed=7)] == [train, val, test]
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert set(train).isdisjoint(val) and set(train).isdisjoint(test) and set(val).isdisjoint(test)
    assert sorted(train + val + test) == list(range(100))
    assert train == sorted(train) and test == sorted(test)  # file order within each split
    assert list(split_rows(ds, 0.1, 0.2, seed=8)[2]["n"]) != test


def test_split_edge_cases():
    two_rows = Dataset.from_list([{"n": 0}, {"n": 1}])
    assert [len(part) for part in split_rows(two_rows, 0.01, 0.0, seed=0)] == [1, 1, 0]  # at least one row
    assert [len(part) for part in split_rows(two_rows, 0.0, 0.0, seed=0)] == [2, 0, 0]
    with pytest.raises(DataError, match="leave no training rows"):
        split_rows(two_rows, 0.9, 0.0, seed=0)
    with pytest.raises(DataError, match="data.test_fraction=0.5"):
        split_rows(two_rows, 0.01, 0.5, seed=0)


# tokenize_rows: template, masking, EOS, truncation.

ROWS = Dataset.from_list([
    {"instruction": "Reverse the word.", "input": "abcde", "output": "edcba"},
    {"instruction": "Double 21.", "input": "", "output": "42"},
])


def test_masked_labels_cover_exactly_the_response_and_eos(tokenizer):
    tokenized = tokenize_rows(ROWS, tokenizer, seq_len=256, mask_prompt=True)
    assert tokenized.column_names == ["input_ids", "labels", "truncated", "chunk", "prompt_tokens"]
    assert not any(tokenized["truncated"])
    for row, example in zip(ROWS, tokenized):
        prompt = format_prompt(row["instruction"], row["input"])
        expected_ids = list(prompt.encode()) + list(row["output"].encode()) + [tokenizer.eos_token_id]
        assert example["input_ids"] == expected_ids
        num_prompt = len(prompt.encode())
        assert example["labels"][:num_prompt] == [IGNORE_INDEX] * num_prompt
        assert example["labels"][num_prompt:] == expected_ids[num_prompt:]  # response and EOS
    assert "Input:" not in format_prompt("Double 21.", "")


def test_unmasked_labels_equal_input_ids(tokenizer):
    example = tokenize_rows(ROWS, tokenizer, seq_len=256, mask_prompt=False)[0]
    assert example["labels"] == example["input_ids"]
    assert example["input_ids"][-1] == tokenizer.eos_token_id


def test_truncation_keeps_the_start_and_counts_the_prompt(tokenizer):
    full = tokenize_rows(ROWS, tokenizer, seq_len=256, mask_prompt=True)[0]
    short = tokenize_rows(ROWS, tokenizer, seq_len=10, mask_prompt=True)[0]
    assert short["input_ids"] == full["input_ids"][:10]
    assert short["labels"] == full["labels"][:10]
    assert short["truncated"] and not full["truncated"]
    prompt = format_prompt(ROWS[0]["instruction"], ROWS[0]["input"])
    assert short["prompt_tokens"] == full["prompt_tokens"] == len(prompt.encode())  # measured before the cut


# Collator.

def test_collator_right_pads_to_a_multiple():
    batch = Collator(pad_token_id=256, pad_to_multiple_of=8)([
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
        {"input_ids": list(range(9)), "labels": list(range(9))},
    ])
    assert {name: tuple(t.shape) for name, t in batch.items()} == {
        "input_ids": (2, 16), "labels": (2, 16), "attention_mask": (2, 16), "num_tokens": ()}
    assert batch["num_tokens"].item() == 12
    assert batch["input_ids"][0].tolist() == [1, 2, 3] + [256] * 13
    assert batch["labels"][0].tolist() == [-100, 2, 3] + [-100] * 13
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 9]
    assert batch["attention_mask"][1].tolist() == [1] * 9 + [0] * 7


def test_collator_gives_packed_rows_positions_and_no_attention_mask():
    batch = Collator(pad_token_id=256, pad_to_multiple_of=8)([
        {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, -100, 5], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [7, 8], "labels": [-100, 8], "position_ids": [0, 1]},
    ])
    assert set(batch) == {"input_ids", "labels", "position_ids", "num_tokens"}
    # The padding continues as one more example of its own, so it never joins a real one.
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert batch["labels"][1].tolist() == [-100, 8] + [-100] * 6
    assert batch["num_tokens"].item() == 7


# ShardedBatches.

def sharded(dataset, micro_batch_size, rank, world_size, seed=0):
    return ShardedBatches(dataset, micro_batch_size, rank, world_size, seed, Collator(pad_token_id=0))


def test_two_ranks_cover_what_one_rank_sees():
    dataset = numbered_rows(23)
    one_rank = rows_in(sharded(dataset, 4, rank=0, world_size=1).iterate(epoch=3))
    ranks = [sharded(dataset, 2, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5  # 23 rows -> 11 per rank -> 5 full micro-batches
    per_rank = [rows_in(r.iterate(epoch=3)) for r in ranks]
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    # Step by step the two ranks' batches of 2 hold what one rank's batches of 4 hold.
    assert sorted(per_rank[0] + per_rank[1]) == sorted(one_rank[:20])
    assert sorted(per_rank[0][:2] + per_rank[1][:2]) == sorted(one_rank[:4])


def test_epochs_reorder_and_iteration_is_repeatable():
    batches = sharded(numbered_rows(32), 4, rank=0, world_size=1)
    epoch_0 = rows_in(batches.iterate(epoch=0))
    assert sorted(epoch_0) == list(range(32))
    assert rows_in(batches.iterate(epoch=1)) != epoch_0
    assert rows_in(sharded(numbered_rows(32), 4, rank=0, world_size=1).iterate(epoch=0)) == epoch_0
    batches.set_epoch(1)
    assert rows_in(batches) == rows_in(batches.iterate(epoch=1))


def test_start_row_yields_the_tail_of_the_epoch():
    batches = sharded(numbered_rows(30), 3, rank=1, world_size=2)
    full = [batch["input_ids"] for batch in batches.iterate(epoch=2)]
    resumed = [batch["input_ids"] for batch in batches.iterate(epoch=2, start_row=3 * 3 * 2)]  # 3 global batches
    assert len(full) == len(batches) == 5 and len(resumed) == 2
    assert all((a == b).all() for a, b in zip(full[3:], resumed))


def test_too_few_rows_for_one_micro_batch_per_rank():
    with pytest.raises(ValueError, match=r"train.micro_batch_size=4 on 2 rank\(s\).*has 7"):
        sharded(numbered_rows(7), 4, rank=0, world_size=2)
