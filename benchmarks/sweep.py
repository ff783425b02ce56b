"""A sweep on the GPU machine: Llama-3.2-1B-shaped random model (bf16, seq 2048), LoRA, random tokens.

    python benchmarks/sweep.py [--steps 30]

Runs a grid of 4 trials (optim.lr x train.micro_batch_size, where micro batch 256 cannot fit and must be
recorded as an out-of-memory failure) and an Optuna sweep of 4 trials with the median pruner, each trial a whole
`shardtune train` run on the GPU, and prints both sweeps' results tables (results.md).
"""
import argparse
import subprocess
import sys
from pathlib import Path

from run import random_model

ROOT = Path("/tmp/bench-sweep")


def sweep(name: str, steps: int, *overrides: str) -> str:
    sweep_dir = ROOT / name
    subprocess.run(["rm", "-rf", str(sweep_dir)], check=True)
    command = [sys.executable, "-m", "shardtune.cli", "train", "-m", "model=llama3.2-1b",
               f"model.name_or_path={random_model('1b')}", "model.tokenizer=${asset:tiny-tokenizer}", "method=lora",
               "data=random_tokens", "data.num_rows=2048", "data.val_fraction=0.05", f"train.max_steps={steps}",
               "train.seq_len=2048", "train.log_interval=5", "train.eval_interval=10", "train.eval_max_batches=8",
               "train.save_final=false", "launcher.nproc_per_node=1", f"hydra.sweep.dir={sweep_dir}", *overrides]
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    print(f"exit code {result.returncode}; last lines:\n" + "\n".join((result.stdout + result.stderr).splitlines()[-5:]))
    return (sweep_dir / "results.md").read_text() if (sweep_dir / "results.md").exists() else "(no results.md)"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    steps = parser.parse_args().steps
    print(sweep("grid", steps, "optim.lr=1e-4,1e-3", "train.micro_batch_size=4,256"))
    print(sweep("optuna", steps, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=0",
                "optim.lr=tag(log, interval(1e-6, 1e-3))", "train.micro_batch_size=4", "sweep.pruner=median",
                "sweep.pruner_startup_trials=1"))


if __name__ == "__main__":
    main()
