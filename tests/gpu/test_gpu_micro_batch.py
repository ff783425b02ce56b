"""train.micro_batch_size=auto on a real GPU, its trial step included: told that the GPU is far larger than it is
(launcher.gpu_memory_gib), the launcher picks auto's largest, 128 rows of 4096 tokens, which no GPU here holds (the
fp32 logits alone would take 64 GiB); the trial runs out of memory, halves until a size fits on the card, and the run
trains at that size with the global batch kept (micro batch x grad_accum = 128)."""
import pytest
import torch
from torch.distributed.fsdp import FSDPModule

from conftest import run_shardtune
from shardtune.run_dir import read_summary

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# A small Llama shape with a vocabulary large enough that the logits decide what fits (the fused loss off).
SHAPE = ["model.architecture.hidden_size=512", "model.architecture.intermediate_size=1408",
         "model.architecture.num_hidden_layers=4", "model.architecture.num_attention_heads=8",
         "model.architecture.num_key_value_heads=4", "model.architecture.vocab_size=32768"]


# FSDP2 goes on after running out of memory only where torch has FSDPModule.reset_iter_state (2.13 has it); older
# releases stop the run with an error that says so (strategies/fsdp.py).
FSDP_RECOVERS = hasattr(FSDPModule, "reset_iter_state")


# full-ddp: one rank's master weights (trainer/master_weights.py) drop the fp32 gradients a failed trial summed.
@pytest.mark.parametrize("method,strategy", [("lora", "ddp"), ("full", "ddp"), pytest.param(
    "lora", "fsdp", marks=pytest.mark.skipif(not FSDP_RECOVERS,
                                             reason=f"torch {torch.__version__} lacks FSDPModule.reset_iter_state"))],
    ids=["lora-ddp", "full-ddp", "lora-fsdp"])
def test_the_trial_halves_a_micro_batch_that_cannot_fit(tmp_path, method, strategy):
    run_dir = tmp_path / strategy
    no_dropout = ["method.dropout=0"] if method == "lora" else []
    result = run_shardtune("train", f"method={method}", f"strategy={strategy}", *no_dropout, *SHAPE,
                           "train.seq_len=4096", "train.micro_batch_size=auto", "launcher.gpu_memory_gib=100000",
                           "launcher.nproc_per_node=1", "train.kernels=none", "train.max_steps=2",
                           "train.eval_interval=0", "train.save_final=false", f"output_dir={run_dir}")
    output = result.stdout + result.stderr
    assert "micro batch: auto -> 128 " in (run_dir / "launcher.log").read_text()
    assert "micro batch trial: 128 ran out of GPU memory on some rank; trying 64 with grad_accum 2" in output
    summary = read_summary(run_dir)
    size, grad_accum = summary["micro_batch_size"], summary["grad_accum"]
    assert summary["steps"] == 2 and size < 128 and size * grad_accum == 128, summary
    assert f"micro batch trial: {size} fits on every rank (grad_accum {grad_accum})" in output
