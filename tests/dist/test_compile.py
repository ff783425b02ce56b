"""train.compile=blocks compiles each decoder block in place (the strategy's hooks stay on it; ZeRO-3's run around
its compiled forward) and changes no loss: on 2 CPU workers under FSDP2 and ZeRO-3 (and QLoRA's 4-bit base under
DDP), compiled blocks give the eager run's losses step by step."""
import re

from conftest import SHARED_RUNS, compose_cfg, run_shardtune, train_losses
from shardtune.run_dir import read_summary

import pytest

AGREEMENT_RTOL = 2e-4  # as test_matrix: the same math, summed in another order


def test_compiled_blocks_give_the_eager_losses_under_fsdp(shared_run, tmp_path):
    eager = train_losses(shared_run("lora-fsdp"))
    result = run_shardtune("train", *SHARED_RUNS["lora-fsdp"], "train.compile=blocks", f"output_dir={tmp_path}")
    assert "compile: per block" in result.stdout + result.stderr
    assert "0 graph breaks" in result.stdout + result.stderr
    # The final evaluation runs the blocks in eval mode, which their graphs guard on: at most a recompile per block.
    recompiles = re.search(r"; (\d+) recompiles after the first step$", read_summary(tmp_path)["compile"])
    assert 0 < int(recompiles.group(1)) <= compose_cfg("model=tiny").model.architecture.num_hidden_layers
    compiled = train_losses(tmp_path)
    assert sorted(compiled) == sorted(eager)
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, rel=AGREEMENT_RTOL), step


def test_compiled_qlora_blocks_give_the_eager_losses(shared_run, tmp_path):
    """bitsandbytes' 4-bit matmul is a custom op the compiler keeps in the graph: no graph break at the quantized
    layers."""
    eager = train_losses(shared_run("qlora-ddp"))
    result = run_shardtune("train", *SHARED_RUNS["qlora-ddp"], "train.compile=blocks", f"output_dir={tmp_path}")
    assert "0 graph breaks" in result.stdout + result.stderr
    compiled = train_losses(tmp_path)
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, rel=AGREEMENT_RTOL), step


def test_compiled_blocks_with_selective_checkpointing_give_the_eager_losses(shared_run, tmp_path):
    """Checkpointing inside compiled blocks (the compiler traces torch.utils.checkpoint, per-op policy included)."""
    eager = train_losses(shared_run("lora-ddp"))
    result = run_shardtune("train", *SHARED_RUNS["lora-ddp"], "train.compile=blocks",
                           "train.activation_checkpointing=true", "train.activation_checkpointing_every=2",
                           "train.activation_checkpointing_policy=ops", f"output_dir={tmp_path}")
    assert "0 graph breaks" in result.stdout + result.stderr
    compiled = train_losses(tmp_path)
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, rel=AGREEMENT_RTOL), step


def test_fused_lora_layers_in_compiled_checkpointed_blocks_give_peft_losses_under_fsdp(shared_run, tmp_path):
    """train.lora_kernel=fused (auto on GPUs): its custom operators trace into the compiled blocks without a break,
    under FSDP2's sharded adapters and activation checkpointing (which keeps x·Aᵀ in compiled blocks), and change no
    loss."""
    peft = train_losses(shared_run("lora-fsdp"))
    result = run_shardtune("train", *SHARED_RUNS["lora-fsdp"], "train.lora_kernel=fused", "train.compile=blocks",
                           "train.activation_checkpointing=true", f"output_dir={tmp_path}")
    assert "compile: per block; lora: fused" in result.stdout + result.stderr
    assert "inputs and matmul outputs under 1/16 of their input (LoRA's x·Aᵀ) kept" in result.stdout + result.stderr
    assert "0 graph breaks" in result.stdout + result.stderr
    fused = train_losses(tmp_path)
    assert sorted(fused) == sorted(peft)
    for step, loss in peft.items():
        assert fused[step] == pytest.approx(loss, rel=AGREEMENT_RTOL), step


def test_compiled_blocks_give_the_eager_losses_under_zero3(shared_run, tmp_path):
    """ZeRO-3's hooks are marked for the compiler not to trace: each decoder block is gathered whole (a ZeRO leaf
    module) and only its forward is compiled, so no hook breaks the block's graph, here under activation
    checkpointing (whose recompute gathers the block again)."""
    eager = train_losses(shared_run("full-zero3"))
    result = run_shardtune("train", *SHARED_RUNS["full-zero3"], "train.compile=blocks",
                           "train.activation_checkpointing=true", f"output_dir={tmp_path}")
    assert "0 graph breaks" in result.stdout + result.stderr
    compiled = train_losses(tmp_path)
    assert sorted(compiled) == sorted(eager)
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, rel=AGREEMENT_RTOL), step
