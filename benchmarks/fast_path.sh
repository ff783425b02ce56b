#!/bin/bash
# The fast path on one GPU (issue 14): shardtune's 1B cases with the fast path (train.kernels / train.compile auto)
# and without, beside the Hugging Face Trainer with Liger, in one device call. From the repository root:
#   bash benchmarks/fast_path.sh [1b|8b|tests]...   (JSON lines and logs under $OUT)
set -u
source "$(dirname "$0")/device_env.sh"
EAGER="train.kernels=none train.compile=none"
for part in "$@"; do
  case $part in
    1b)
      timeout 150 python3 benchmarks/run.py full-fsdp >> "$OUT/1b.jsonl" 2>> "$OUT/1b.err"
      timeout 120 python3 benchmarks/run.py lora-fsdp --extra method.dropout=0 >> "$OUT/1b.jsonl" 2>> "$OUT/1b.err"
      timeout 100 python3 benchmarks/run.py --baseline 1b-full --liger >> "$OUT/1b.jsonl" 2>> "$OUT/1b.err"
      timeout 100 python3 benchmarks/run.py --baseline 1b-lora --liger >> "$OUT/1b.jsonl" 2>> "$OUT/1b.err"
      ;;
    1b-eager)
      timeout 100 python3 benchmarks/run.py full-fsdp --extra $EAGER >> "$OUT/1b.jsonl" 2>> "$OUT/1b.err"
      timeout 100 python3 benchmarks/run.py lora-fsdp --extra $EAGER method.dropout=0 >> "$OUT/1b.jsonl" 2>> "$OUT/1b.err"
      ;;
    tests)
      timeout 460 python3 -m pytest -q -p no:cacheprovider --durations=20 tests/gpu/test_gpu_fast_path.py > "$OUT/gpu-tests.txt" 2>&1
      ;;
  esac
done
echo done
