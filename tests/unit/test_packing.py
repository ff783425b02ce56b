"""Packing (shardtune/data/packing.py): bins, position ids, and the loss equal to unpacked batches."""
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from conftest import compose_cfg
from shardtune.config import asset_path
from shardtune.data import Collator, build
from shardtune.data.packing import assign_to_bins, pack_examples
from shardtune.data.tokenize import IGNORE_INDEX


def test_best_fit_decreasing_fills_bins_and_keeps_every_example_once():
    lengths = [5, 3, 8, 2, 7, 1, 4]
    bins = assign_to_bins(lengths, capacity=10)
    assert sorted(i for members in bins for i in members) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in members) <= 10 for members in bins)
    assert len(bins) == 3  # 30 tokens in bins of 10: no space wasted here
    assert assign_to_bins(lengths, capacity=10) == bins  # deterministic


def test_packed_rows_restart_positions_and_mask_each_first_label():
    from datasets import Dataset
    ds = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
                            "labels": [[-100, 2, 3], [4, 5], [-100, -100, 8, 9]]})
    packed = pack_examples(ds, seq_len=5)
    rows = sorted(packed.to_list(), key=lambda row: row["input_ids"])
    assert rows == [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, -100, 5], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [6, 7, 8, 9], "labels": [-100, -100, 8, 9], "position_ids": [0, 1, 2, 3]},
    ]


@pytest.fixture(scope="module")
def tiny_model_and_examples():
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tiny-tokenizer"))
    cfg = compose_cfg()
    data = OmegaConf.merge(cfg.data, {"val_fraction": 0.0, "test_fraction": 0.0})
    examples = build(data, tokenizer, seq_len=128, seed=0).train.select(range(24))
    torch.manual_seed(0)
    config = AutoConfig.for_model(**cfg.model.architecture)
    return config, tokenizer, examples


def summed_loss(model, batches) -> tuple:
    loss, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            batch.pop("num_tokens", None)
            loss += model(**batch, num_items_in_batch=1).loss.item()  # a sum over the batch's label tokens
            tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return loss, tokens


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(tiny_model_and_examples, attention):
    config, tokenizer, examples = tiny_model_and_examples
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()
    model.config.use_cache = False  # as in training: transformers reads packing only without a KV cache
    collate = Collator(tokenizer.pad_token_id)
    unpacked = [collate(examples.select(range(i, i + 4)).to_list()) for i in range(0, len(examples), 4)]
    packed_rows = pack_examples(examples, seq_len=256)
    assert len(packed_rows) < len(examples) / 3  # short examples: several share each row
    packed = [collate(packed_rows.select(range(i, min(i + 2, len(packed_rows)))).to_list())
              for i in range(0, len(packed_rows), 2)]
    assert "attention_mask" not in packed[0] and "position_ids" in packed[0]
    loss_unpacked, tokens_unpacked = summed_loss(model, unpacked)
    loss_packed, tokens_packed = summed_loss(model, packed)
    assert tokens_packed == tokens_unpacked
    assert loss_packed == pytest.approx(loss_unpacked, rel=1e-5)
    # Without the position restarts the examples would attend to each other: a different loss.
    for batch in packed:
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    assert summed_loss(model, packed)[0] != pytest.approx(loss_unpacked, rel=1e-3)
