# Sourced by the device scripts: unpack the GPU site (.gpu-site.tar.xz, once per warm machine), the environment every
# command there needs (NVLink multicast off, W&B offline), and $OUT for results.
mkdir -p /tmp/site && [ -e /tmp/site/hf_baseline.py ] || tar xJf .gpu-site.tar.xz -C /tmp/site --strip-components=1
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-} NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
       NVSHMEM_DISABLE_NVLS=1 WANDB_MODE=offline
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# A pytest stopped by `timeout` leaves the shardtune run it started (a process of its own) holding the GPU, and a warm
# machine keeps it into the next call: end whatever still computes there before measuring (so run these scripts
# one after another in a call, never side by side).
free_gpu() { nvidia-smi --query-compute-apps=pid --format=csv,noheader | xargs -r kill -9; sleep 2; }
free_gpu
