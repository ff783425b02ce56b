"""Under FSDP2 no rank ever holds the whole model: it is built on the meta device, sharded, and each rank reads only
its own slices of the checkpoint, so a node needs about one copy of the model in host memory however many ranks it
runs (issue 13). QLoRA's packed 4-bit base is split over the ranks too. That the losses are those of DDP, which loads
the whole model on every rank, is test_matrix.py's test_strategies_agree_step_by_step."""
import json
import math

import pytest
import torch
from conftest import FAST, run_shardtune, train_losses
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from shardtune.config import asset_path
from shardtune.run_dir import SUMMARY_FILE

GIB = 1024**3
WORLD_SIZE = 2
# About 290M parameters (1.1 GiB in fp32, the dtype LoRA's frozen base loads in on a CPU): big enough that a copy
# per rank stands out above the ~1 GiB a worker needs for its libraries, in many small layers so that the one or two
# layers FSDP gathers at a time stay small beside it.
SHAPE = dict(vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
             num_key_value_heads=4, max_position_embeddings=256)
SHARD_FILE_SIZE = "128MB"  # as hub checkpoints come in files of a few GB: a reader maps one file at a time


def summary(run_dir) -> dict:
    return json.loads((run_dir / SUMMARY_FILE).read_text())


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("big") / "llama-290m"
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tiny-tokenizer"))
    config = LlamaConfig(**SHAPE, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    sizes = {
        "model": sum(p.numel() for p in model.parameters()) * 4,
        "layer": sum(p.numel() for p in model.model.layers[0].parameters()) * 4,
        # The root's own parameters (embeddings, head, final norm) stay gathered through the step.
        "root": sum(p.numel() for name, p in model.named_parameters() if ".layers." not in name) * 4,
    }
    model.save_pretrained(model_dir, max_shard_size=SHARD_FILE_SIZE)
    tokenizer.save_pretrained(model_dir)
    sizes["file"] = max(file.stat().st_size for file in model_dir.glob("*.safetensors"))
    return model_dir, sizes


def test_each_rank_holds_its_shard_of_a_pretrained_model_not_a_copy(big_model, shared_run, tmp_path):
    model_dir, size = big_model
    # The same workers on the tiny model: what a rank needs besides the model (libraries, data, buffers).
    baseline = max(summary(shared_run("lora-fsdp"))["host_peak_gib_per_rank"]) * GIB

    output_dir = tmp_path / "run"
    run_shardtune("train", f"model.name_or_path={model_dir}", "method=lora", "strategy=fsdp", "method.dropout=0",
                  "train.max_steps=1", "train.seq_len=8", "train.micro_batch_size=1", "train.eval_interval=0",
                  "train.log_interval=1", "data=random_tokens", "data.num_rows=8", f"output_dir={output_dir}",
                  f"data.cache_dir={tmp_path / 'cache'}")

    result = summary(output_dir)
    weights = [gib * GIB for gib in result["weights_gib_per_rank"]]
    assert len(weights) == WORLD_SIZE
    for held in weights:  # half of the base and half of the adapters
        assert held == pytest.approx((size["model"] + result["trainable_parameters"] * 4) / WORLD_SIZE, rel=0.01)
    # Each rank: its shard, the one or two layers FSDP gathers while they run, the root kept gathered, one mapped
    # checkpoint file while reading, and 256 MiB for activations and allocator slack. Loading a copy per rank (the
    # old path) needs a whole model on each: 1.1 GiB above the baseline, more than this bound.
    bound = baseline + size["model"] / WORLD_SIZE + 2 * size["layer"] + size["root"] + size["file"] + 256 * 2**20
    assert bound < baseline + size["model"]
    peaks = [gib * GIB for gib in result["host_peak_gib_per_rank"]]
    assert all(peak <= bound for peak in peaks), (
        f"peak host memory per rank {[round(p / GIB, 2) for p in peaks]} GiB; bound {bound / GIB:.2f} GiB "
        f"(baseline {baseline / GIB:.2f}, model {size['model'] / GIB:.2f})")
    # A random model's first loss is about ln of its vocabulary: 9.0 for this one, 5.8 for the tiny default.
    assert abs(train_losses(output_dir)[1] - math.log(SHAPE["vocab_size"])) < 0.5


def test_qlora_splits_the_packed_4bit_base_over_the_ranks(shared_run):
    replicated = summary(shared_run("qlora-ddp"))["weights_gib_per_rank"]
    sharded = summary(shared_run("qlora-fsdp"))["weights_gib_per_rank"]
    assert replicated[0] == replicated[1]  # DDP: every rank holds the whole model
    for held in sharded:  # FSDP: about half each (shards of uneven tensors are padded)
        assert held == pytest.approx(replicated[0] / WORLD_SIZE, rel=0.1)


def test_tied_embeddings_load_into_shards_as_into_a_whole_model(tmp_path):
    # Llama-3.2's small models tie the head to the embeddings: their checkpoints hold the embedding only.
    model_dir = tmp_path / "tied"
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tiny-tokenizer"))
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    losses = {}
    for strategy in ("ddp", "fsdp", "zero3"):
        output_dir = tmp_path / strategy
        run_shardtune("train", f"model.name_or_path={model_dir}", "method=full", f"strategy={strategy}", *FAST,
                      "train.max_steps=4", "train.save_final=false", f"output_dir={output_dir}",
                      f"data.cache_dir={tmp_path / 'cache'}")
        losses[strategy] = train_losses(output_dir)
    assert sorted(losses["ddp"]) == [1, 2, 3, 4]
    for strategy in ("fsdp", "zero3"):  # tolerance as in test_matrix.py
        assert losses[strategy] == pytest.approx(losses["ddp"], rel=2e-4), strategy
