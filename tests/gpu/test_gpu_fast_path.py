"""The fast path (Liger kernels, compiled blocks, fused LoRA layers) changes the speed, not the training: 100 steps of a small
real-shaped Llama give the loss curve of the eager transformers modules within 1% at every step after warm-up, for
full fine-tuning, LoRA and QLoRA under DDP, FSDP2 and ZeRO-3 (the pairs each method has)."""
import pytest
import torch

from conftest import run_shardtune, train_losses

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

STEPS, WARMUP = 100, 10
# Llama-shaped (GQA, 64-dim heads, SwiGLU, a vocabulary big enough for the fused loss to matter), small enough
# that a run is mostly start-up; the byte-level tokenizer uses the first 259 rows.
SHAPE = ["model.architecture.hidden_size=512", "model.architecture.intermediate_size=1408",
         "model.architecture.num_hidden_layers=4", "model.architecture.num_attention_heads=8",
         "model.architecture.num_key_value_heads=4", "model.architecture.vocab_size=32768"]
RUN = [*SHAPE, f"train.max_steps={STEPS}", "train.seq_len=256", "train.micro_batch_size=4", "train.log_interval=1",
       "train.eval_interval=0", "optim.warmup_steps=10", "train.save_final=false", "launcher.nproc_per_node=1",
       "train.precision=bf16"]
# Learning rates of fine-tuning, not of pre-training: at 1e-3 a full fine-tune is chaotic, and any bf16 rounding
# difference grows past 1% within 50 steps (on an H100, 2026-12-06: 1.1% at step 85 under FSDP2, 1.3% at step 50
# under ZeRO-3, with the loss still falling by 7).
LEARNING_RATES = {"full": "1e-4", "lora": "1e-3", "qlora": "1e-3"}
CASES = [("full", "ddp"), ("full", "fsdp"), ("full", "zero3"), ("lora", "ddp"), ("lora", "fsdp"), ("qlora", "ddp"),
         ("qlora", "fsdp")]
TOLERANCE = 0.01
FP8_TOLERANCE = 0.03  # float8 rounds the matmuls' inputs: a different curve, which must still be bf16's training


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c))
def test_fast_path_keeps_the_loss_curve(tmp_path, case):
    method, strategy = case
    losses = {}
    fused_lora = ["train.lora_kernel=fused"] if method == "lora" else []  # QLoRA's 4-bit layers keep peft's
    for name, settings in {"eager": ["train.kernels=none", "train.compile=none", "train.lora_kernel=peft"],
                           "fast": ["train.kernels=liger", "train.compile=blocks", *fused_lora]}.items():
        run_dir = tmp_path / name
        method_settings = [] if method == "full" else ["method.dropout=0"]
        run_shardtune("train", f"method={method}", f"strategy={strategy}", *RUN, f"optim.lr={LEARNING_RATES[method]}",
                      *method_settings, *settings, f"output_dir={run_dir}")
        losses[name] = train_losses(run_dir)
    eager, fast = losses["eager"], losses["fast"]
    assert sorted(fast) == sorted(eager) == list(range(1, STEPS + 1))
    assert eager[STEPS] < eager[1] - 1.0, "the loss must fall for the comparison to mean something"
    for step in range(WARMUP + 1, STEPS + 1):
        assert fast[step] == pytest.approx(eager[step], rel=TOLERANCE), (step, fast[step], eager[step])


def test_checkpointing_variants_keep_the_loss_curve(tmp_path):
    """Every 2nd layer checkpointed with the per-op policy and offloaded to pinned host memory, inside compiled
    blocks: the curve of the same fast path without checkpointing."""
    losses = {}
    for name, settings in {"plain": [], "checkpointed": [
            "train.activation_checkpointing=true", "train.activation_checkpointing_every=2",
            "train.activation_checkpointing_policy=ops", "train.activation_offload=true"]}.items():
        run_shardtune("train", "method=lora", "strategy=ddp", *RUN, "optim.lr=1e-3", "method.dropout=0",
                      "train.kernels=liger", "train.compile=blocks", *settings, f"output_dir={tmp_path / name}")
        losses[name] = train_losses(tmp_path / name)
    for step in range(WARMUP + 1, STEPS + 1):
        assert losses["checkpointed"][step] == pytest.approx(losses["plain"][step], rel=TOLERANCE), step


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_fp8_follows_the_bf16_loss_curve(tmp_path, strategy):
    """Float8 matmuls (torchao, tensorwise) against bf16, both in compiled blocks: fp8 trains as bf16 does, within
    FP8_TOLERANCE. Not within the fast path's 1%, which is why train.fp8=auto leaves it off (on an H100, 2026-12-06:
    1.03% at step 29 against bf16 eager under DDP). The test's model is too small for torchao's filter, so the layer
    sizes are those of a 1B model's."""
    pytest.importorskip("torchao")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs float8 tensor cores")
    wide = ["model.architecture.hidden_size=2048", "model.architecture.intermediate_size=8192",
            "model.architecture.num_attention_heads=16", "model.architecture.num_key_value_heads=8"]
    losses = {}
    for name, settings in {"bf16": [], "fp8": ["train.fp8=tensorwise"]}.items():
        run_shardtune("train", "method=full", f"strategy={strategy}", *RUN, *wide, f"optim.lr={LEARNING_RATES['full']}",
                      "train.compile=blocks", *settings, f"output_dir={tmp_path / name}")
        losses[name] = train_losses(tmp_path / name)
    differences = {step: abs(losses["fp8"][step] / losses["bf16"][step] - 1) for step in range(WARMUP + 1, STEPS + 1)}
    worst = max(differences, key=differences.get)
    print(f"fp8 against bf16 ({strategy}): largest difference {differences[worst]:.2%} at step {worst}")
    assert differences[worst] <= FP8_TOLERANCE, (worst, losses["fp8"][worst], losses["bf16"][worst])
