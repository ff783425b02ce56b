"""GPU throughput benchmark: shardtune and the Hugging Face Trainer baseline, side by side, in one call.

Run on the GPU machine from the repository root (docs/benchmarks.md has the full command):
    python benchmarks/run.py full-zero2 lora-fsdp ... --baseline 1b-full 1b-lora

Each shardtune case trains a random-initialised Llama-3.2-1B-shaped model (bf16, seq 2048, micro batch
4, no activation checkpointing: the baseline's settings) on random tokens for 20 steps; tokens/s comes
from the median step time of steps 6-20, as the baseline measures it. Prints one JSON line per case, with
the GPU peaks after loading and over the run, and each rank's weights and peak host memory (summary.json).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SEQ_LEN, MICRO_BATCH, STEPS, WARMUP = 2048, 4, 20, 5
SHAPES = {"1b": "llama3.2-1b", "3b": "llama3.2-3b", "8b": "llama3.1-8b"}


def random_model(size: str, num_layers: int = 0) -> str:
    """Save a random model of the preset's shape once (bf16), for every case to load; num_layers > 0 changes its
    number of decoder layers (a model of a size between the presets, e.g. one whose full fine-tune just exceeds a
    GPU)."""
    path = Path(f"/tmp/shardtune-rand-{size}" + (f"-{num_layers}layers" if num_layers else ""))
    if not (path / "config.json").exists():
        from omegaconf import OmegaConf
        from transformers import AutoConfig, AutoModelForCausalLM
        import shardtune
        preset = OmegaConf.load(Path(shardtune.__file__).parent / "conf" / "model" / f"{SHAPES[size]}.yaml")
        architecture = OmegaConf.to_container(preset.architecture)
        if num_layers:
            architecture["num_hidden_layers"] = num_layers
        config = AutoConfig.for_model(**architecture)
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(path)
        del model
        torch.cuda.empty_cache()
    return str(path)


def run_shardtune(case: str, size: str, nproc: int, extra: list, steps: int = STEPS,
                  micro_batch: int = MICRO_BATCH, num_layers: int = 0) -> dict:
    method, strategy = case.split("-", 1)
    size_name = size + (f"-{num_layers}layers" if num_layers else "")
    output_dir = Path(f"/tmp/bench/{size_name}-{case}-x{nproc}")
    subprocess.run(["rm", "-rf", str(output_dir)], check=True)
    overrides = [f"model={SHAPES[size]}", f"model.name_or_path={random_model(size, num_layers)}",
                 "model.tokenizer=${asset:tiny-tokenizer}", f"method={method}", f"strategy={strategy}",
                 "data=random_tokens", f"data.num_rows={(steps + 1) * micro_batch * nproc}",
                 f"train.max_steps={steps}", f"train.micro_batch_size={micro_batch}", f"train.seq_len={SEQ_LEN}",
                 "train.log_interval=1", "train.save_final=false", "train.eval_interval=0",
                 f"launcher.nproc_per_node={nproc}", f"output_dir={output_dir}", *extra]
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "shardtune.cli", "train", *overrides], capture_output=True, text=True)
    if result.returncode != 0:
        from shardtune.sweep.trial import error_summary
        output = result.stdout + result.stderr
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "output.txt").write_text(output)
        return {"case": f"shardtune {size_name}-{case}", "error": error_summary(output.splitlines()),
                "output_tail": output[-1500:]}
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if "step_time_s" in r and r["step"] > min(WARMUP, steps - 2)]
    step_s = statistics.median(r["step_time_s"] for r in steady)
    tokens_per_s_per_gpu = micro_batch * SEQ_LEN / step_s
    summary = json.loads((output_dir / "summary.json").read_text())
    mfu = statistics.median(r["mfu"] for r in steady) if "mfu" in steady[0] else None
    return {"case": f"shardtune {size_name}-{case}" + (f" {' '.join(extra)}" if extra else ""), "gpus": nproc,
            "tokens_per_s_per_gpu": round(tokens_per_s_per_gpu), "step_s": round(step_s, 4),
            "mfu": round(mfu, 3) if mfu else None,
            "peak_mem_gib": max(r.get("peak_mem_alloc_gib", 0) for r in rows),
            "load_peak_mem_gib": summary.get("load_peak_mem_alloc_gib"),
            "weights_gib_per_rank": summary.get("weights_gib_per_rank"),
            "host_peak_gib_per_rank": summary.get("host_peak_gib_per_rank"),
            "fast_path": summary.get("fast_path"), "compile": summary.get("compile"), "fp8": summary.get("fp8"),
            "first_loss": rows[0]["loss"], "last_loss": [r for r in rows if "loss" in r][-1]["loss"],
            "wall_s": round(time.time() - started, 1)}


def run_baseline(case: str, extra: list) -> dict:
    result = subprocess.run([sys.executable, "/tmp/site/hf_baseline.py", case, *extra], capture_output=True, text=True)
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"case": f"hf {case}", "error": (result.stdout + result.stderr)[-3000:]}
    return {**json.loads(lines[-1]), "case": f"hf {case} {' '.join(extra)}".strip()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", nargs="*", help="METHOD-STRATEGY, e.g. full-zero2 lora-fsdp qlora-ddp")
    parser.add_argument("--size", default="1b", choices=sorted(SHAPES))
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--baseline", nargs="*", default=[], help="hf_baseline.py cases, e.g. 1b-full 1b-lora")
    parser.add_argument("--liger", action="store_true", help="the baseline cases with Liger's kernels")
    parser.add_argument("--extra", nargs="*", default=[], help="extra shardtune overrides for every case")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--micro-batch", type=int, default=MICRO_BATCH)
    parser.add_argument("--layers", type=int, default=0, help="decoder layers instead of the preset's")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    for case in args.baseline:
        print(json.dumps(run_baseline(case, ["--liger"] if args.liger else [])), flush=True)
    for case in args.cases:
        print(json.dumps(run_shardtune(case, args.size, args.nproc, args.extra, args.steps, args.micro_batch,
                                       args.layers)),
              flush=True)


if __name__ == "__main__":
    main()
