#!/bin/bash
# FSDP2 CPU offload on one H200 (issue 13): 8B LoRA, and a 3B full fine-tune with and without offload; then
# `shardtune plan` for the cases of big_models.sh and these. One device call after big_models.sh (same set-up).
set -u
source "$(dirname "$0")/device_env.sh"
AC=train.activation_checkpointing=true
timeout 150 python3 benchmarks/run.py lora-fsdp --size 8b --steps 5 --micro-batch 2 --extra $AC strategy.cpu_offload=true \
    > "$OUT/8b-lora-offload.jsonl" 2>&1
timeout 330 python3 benchmarks/run.py full-fsdp --size 3b --steps 3 --micro-batch 1 --extra $AC strategy.cpu_offload=true \
    > "$OUT/3b-full-offload.jsonl" 2>&1
timeout 120 python3 benchmarks/run.py full-fsdp --size 3b --steps 4 --micro-batch 1 --extra $AC > "$OUT/3b-full.jsonl" 2>&1
for case in "llama3.1-8b lora 2 $AC" "llama3.1-8b qlora 2 $AC" "llama3.1-8b lora 2 $AC strategy.cpu_offload=true" \
            "llama3.1-8b full 1 $AC strategy.cpu_offload=true" "llama3.2-3b full 1 $AC strategy.cpu_offload=true" \
            "llama3.2-3b full 1 $AC"; do
  set -- $case
  python3 -m shardtune.cli plan model=$1 method=$2 strategy=fsdp train.micro_batch_size=$3 train.seq_len=2048 "${@:4}" \
      >> "$OUT/plans.txt" 2>&1
done
echo done
