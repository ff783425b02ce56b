#!/bin/bash
# Models bigger than one GPU's share, on one H200 (issue 13): 8B LoRA and QLoRA on FSDP2 (load-time GPU peak
# against the steady state) and an 8B full fine-tune with FSDP2 CPU offload; then the FSDP pairs of tests/gpu.
# One device call, from the repository root; JSON lines and logs go to $OUT.
set -u
source "$(dirname "$0")/device_env.sh"
free -g > "$OUT/host.txt"; nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/host.txt"
timeout 330 python3 benchmarks/run.py lora-fsdp qlora-fsdp --size 8b --steps 8 --micro-batch 2 \
    --extra train.activation_checkpointing=true > "$OUT/8b-lora-qlora.jsonl" 2> "$OUT/8b-lora-qlora.err"
timeout 200 python3 benchmarks/run.py full-fsdp --size 8b --steps 3 --micro-batch 1 \
    --extra train.activation_checkpointing=true strategy.cpu_offload=true > "$OUT/8b-full-offload.jsonl" \
    2> "$OUT/8b-full-offload.err"
free -g >> "$OUT/host.txt"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_gpu_pairs.py -k "fsdp" > "$OUT/gpu-tests.txt" 2>&1
echo "done"
