"""DDP on one rank trains without the wrapper (nothing to all-reduce). A full fine-tune in bf16 there trains bf16 weights
with fp32 masters (trainer/master_weights.py): FSDP2's mixed precision on one rank, step for step, through gradient
accumulation, a resume and the export."""
import shutil

import pytest
from safetensors.torch import load_file

from conftest import FAST, run_shardtune, train_losses
from shardtune.run_dir import read_summary

ONE_RANK_BF16 = ["method=full", "launcher.cpu_workers=1", "train.precision=bf16", "train.grad_accum=2",
                 "train.save_interval=4"]


def test_one_rank_ddp_full_trains_like_fsdp_mixed_precision(tmp_path):
    runs = {strategy: tmp_path / strategy for strategy in ("ddp", "fsdp")}
    output = {strategy: run_shardtune("train", f"output_dir={output_dir}", *FAST, *ONE_RANK_BF16, f"strategy={strategy}")
              for strategy, output_dir in runs.items()}
    assert "fp32 master weights" in output["ddp"].stdout + output["ddp"].stderr
    losses = train_losses(runs["ddp"])
    assert losses == pytest.approx(train_losses(runs["fsdp"]), rel=1e-6)
    assert losses[8] < losses[1] - 0.3, losses
    # The export holds the fp32 masters, not the bf16 copies the model computed with.
    exported, fsdp_exported = (load_file(runs[s] / "final" / "model.safetensors") for s in ("ddp", "fsdp"))
    assert {tensor.dtype.itemsize for tensor in exported.values()} == {4}
    assert all(exported[name].equal(fsdp_exported[name]) for name in fsdp_exported)
    # The weights the rank reports holding: the fp32 masters and the bf16 copies, 6 bytes a parameter (FSDP2's 4).
    params = sum(tensor.numel() for tensor in exported.values())
    assert read_summary(runs["ddp"])["weights_gib_per_rank"] == [pytest.approx(params * 6 / 2**30)]

    # A resume from step 4's checkpoint (the masters and AdamW's states) continues as if never stopped.
    resumed = tmp_path / "resumed"
    shutil.copytree(runs["ddp"] / "random-init", resumed / "random-init")
    shutil.copytree(runs["ddp"] / "checkpoints" / "step-4", resumed / "checkpoints" / "step-4")
    run_shardtune("train", f"output_dir={resumed}", *FAST, *ONE_RANK_BF16, "strategy=ddp", "resume=auto")
    assert train_losses(resumed) == pytest.approx({step: losses[step] for step in range(5, 9)}, rel=1e-6)


def test_one_rank_ddp_lora_trains_without_the_wrapper(tmp_path):
    result = run_shardtune("train", f"output_dir={tmp_path}", *FAST, "method=lora", "method.dropout=0", "strategy=ddp",
                           "launcher.cpu_workers=1", "strategy.bucket_cap_mb=50")
    output = result.stdout + result.stderr
    assert "ddp on one rank: nothing to all-reduce, so no DDP wrapper" in output
    assert "strategy.bucket_cap_mb and strategy.static_graph have no effect on one rank" in output
    losses = train_losses(tmp_path)
    assert losses[8] < losses[1] - 0.3, losses
    assert (tmp_path / "final" / "adapter_model.safetensors").is_file()
