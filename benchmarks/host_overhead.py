"""The host's share of a training step, per strategy wrapper, on CPU: a model with the 1B Llama's structure (16
decoder layers, tied embeddings) but tiny tensors, so that a step's time is almost all Python and dispatch: what
a GPU waits for when the host cannot keep ahead of it. One process, gloo, world size 1 (the one-GPU case).

    python3 benchmarks/host_overhead.py
"""
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import AutoConfig, AutoModelForCausalLM

from shardtune.trainer.master_weights import MasterWeights

CONFIG = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=16, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True)


def build(wrapper: str):
    """(the model, what forward is called on, its MasterWeights or None)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**CONFIG))
    if wrapper == "master-weights":  # DDP's full fine-tune on one rank
        return model, model, MasterWeights(model, "bf16")
    if wrapper == "bf16":  # what master-weights computes, without its hooks and copies
        return model.bfloat16(), model, None
    if wrapper == "ddp":
        return model, torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True,
                                                                broadcast_buffers=False), None
    if wrapper.startswith("fsdp"):
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if wrapper != "fsdp-root-only":
            for layer in model.model.layers:
                fully_shard(layer, mp_policy=policy, reshard_after_forward=wrapper == "fsdp")
        fully_shard(model, mp_policy=policy, reshard_after_forward=False)
    return model, model, None


def step_times(model, forward, masters, steps: int = 12, warmup: int = 4):
    """Median milliseconds of forward, backward, and clipping plus the optimizer step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as shardtune steps on a GPU
    ids = torch.randint(0, CONFIG["vocab_size"], (1, 16))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        if masters:
            masters.compute()
        loss = forward(input_ids=ids, labels=ids).loss
        forward_done = time.perf_counter()
        loss.backward()
        backward_done = time.perf_counter()
        if masters:
            masters.show_masters()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if masters:
            masters.drop_grads()
            masters.refresh_copies()
        times.append((forward_done - start, backward_done - forward_done, time.perf_counter() - backward_done))
    return [statistics.median(column[warmup:]) * 1e3 for column in zip(*times)]


def main() -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"), RANK="0",
                      WORLD_SIZE="1")
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    for wrapper in ("none", "ddp", "bf16", "master-weights", "fsdp", "fsdp-kept-gathered", "fsdp-root-only"):
        forward, backward, step = step_times(*build(wrapper))
        print(f"{wrapper:19s} forward {forward:6.1f} ms  backward {backward:6.1f} ms  clip+step {step:6.1f} ms  "
              f"total {forward + backward + step:6.1f} ms")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
