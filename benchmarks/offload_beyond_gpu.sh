#!/bin/bash
# FSDP2 CPU offload on one H100 (issue 13): a full fine-tune whose fp32 weights, gradients and AdamW states
# (5.41B params x 16 B = 80.6 GiB) exceed the GPU's 79.2 GiB: Llama-3.1-8B's shape with 20 of its 32 layers (a full
# 8B needs about 120 GiB of host RAM for them, more than these 125 GiB nodes have). Then `shardtune plan` for it,
# with and without offload. From the repository root; JSON lines and the plans go to $OUT.
set -u
source "$(dirname "$0")/device_env.sh"
AC=train.activation_checkpointing=true
EAGER="train.kernels=none train.compile=none"  # offload's memory alone
free -g > "$OUT/host.txt"; nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/host.txt"
timeout 300 python3 benchmarks/run.py full-fsdp --size 8b --layers 20 --steps 3 --micro-batch 1 \
    --extra $AC $EAGER strategy.cpu_offload=true > "$OUT/8b-20layers-full-offload.jsonl" 2> "$OUT/8b-20layers-full-offload.err"
for offload in true false; do
  python3 -m shardtune.cli plan model=llama3.1-8b model.name_or_path=/tmp/shardtune-rand-8b-20layers method=full \
      "model.tokenizer=\${asset:tiny-tokenizer}" \
      strategy=fsdp strategy.cpu_offload=$offload train.micro_batch_size=1 train.seq_len=2048 $AC $EAGER \
      >> "$OUT/plans.txt" 2>&1
done
echo done
