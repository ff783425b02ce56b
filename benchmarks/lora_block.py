"""What LoRA costs in a compiled, checkpointed decoder block, on a GPU: a few decoder layers of Llama-3 8B's shape
(micro batch 2 x 2048, bf16 base under autocast, checkpointed as shardtune checkpoints compiled blocks: inputs and
LoRA's x·Aᵀ kept; until 2026-12-07 01:30 UTC inputs only) timed forward and backward with the base frozen and

  frozen      no adapters (only the norms train, so backward still runs through every layer): the floor;
  lora        peft r16 on every linear, fp32 adapters (shardtune's LoRA);
  lora-bf16   the same adapters in bf16 (what the per-forward casts of fp32 adapters cost);
  lora-tuned  `lora` compiled with inductor's max-autotune GEMM search (are the rank-16 matmuls cuBLAS' weak spot?);
  lora-fused  `lora` with shardtune's fused LoRA layers (train.lora_kernel=fused).

One JSON line per variant (ms per step of all its layers), and the profiled kernels of one step per variant.

    python3 benchmarks/lora_block.py [--layers 4] [--out DIR] [VARIANT ...]
"""
import argparse
import json
import pathlib

import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from shardtune.trainer import activations
from shardtune.trainer.fast_path import FastPath, apply
from shardtune.trainer.model import decoder_layers, keep_adapter_inputs_as_they_come

LLAMA_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=32000, rope_theta=500000.0, max_position_embeddings=8192)
VARIANTS = ("frozen", "lora", "lora-bf16", "lora-tuned", "lora-fused")


def build(variant: str, layers: int):
    torch.manual_seed(0)
    config = AutoConfig.for_model(**LLAMA_8B, num_hidden_layers=layers)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    checkpointing = OmegaConf.create({"activation_checkpointing": True, "activation_checkpointing_every": 1,
                                      "activation_checkpointing_policy": "layer", "activation_offload": False})
    activations.enable(model, checkpointing, "cuda", compiled=True)  # as shardtune checkpoints compiled blocks
    model.requires_grad_(False)
    if variant == "frozen":
        for name, param in model.named_parameters():
            param.requires_grad_("norm" in name)
    else:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
        keep_adapter_inputs_as_they_come(model)
        for name, param in model.named_parameters():
            if param.requires_grad:  # peft made them fp32
                param.data = param.data.to(torch.bfloat16 if variant == "lora-bf16" else torch.float32)
                torch.nn.init.normal_(param, std=0.01)
    if variant == "lora-tuned":
        import torch._inductor.config as inductor
        inductor.max_autotune_gemm = True
    apply(model, FastPath(liger=True, compile_blocks=True, fused_lora=variant == "lora-fused"), decoder_layers)
    return model


def step(model, ids):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        hidden = model(input_ids=ids, output_hidden_states=False).logits
    hidden.float().pow(2).mean().backward()
    for param in model.parameters():
        param.grad = None


def measure(variant: str, layers: int, out: pathlib.Path) -> dict:
    model = build(variant, layers)
    ids = torch.randint(0, LLAMA_8B["vocab_size"], (2, 2048), device="cuda")
    for _ in range(3):  # compile, then warm
        step(model, ids)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    steps = 10
    for _ in range(steps):
        step(model, ids)
    end.record()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        step(model, ids)
        torch.cuda.synchronize()
    table = profiler.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=100)
    (out / f"lora-block-{variant}.txt").write_text(table)
    result = {"variant": variant, "layers": layers, "step_ms": start.elapsed_time(end) / steps,
              "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    del model
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        print(json.dumps(measure(variant, args.layers, out)), flush=True)


if __name__ == "__main__":
    main()
