"""Every required (method, strategy) pair on one GPU: NCCL, bf16, bitsandbytes' CUDA kernels."""
import pytest
import torch

from conftest import FAST, run_shardtune, train_losses

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PAIRS = [("full", "zero1"), ("full", "zero2"), ("full", "zero3"), ("full", "zero3_offload"), ("full", "ddp"),
         ("full", "fsdp"), ("lora", "ddp"), ("lora", "fsdp"), ("qlora", "ddp"), ("qlora", "fsdp")]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_pair_trains_in_bf16_on_gpu(tmp_path, pair):
    method, strategy = pair
    run_shardtune("train", f"method={method}", f"strategy={strategy}", f"output_dir={tmp_path}", *FAST,
                  "launcher.nproc_per_node=1", "train.precision=bf16")
    losses = train_losses(tmp_path)
    assert all(loss == loss for loss in losses.values()), losses  # no NaN
    assert losses[8] < losses[1] - 0.3, losses
    assert (tmp_path / "final").is_dir()
