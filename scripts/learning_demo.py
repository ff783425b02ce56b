"""The learning demo: fine-tune the pretrained tiny base (model=tiny_base) to reverse words with full
fine-tuning, LoRA and QLoRA on 2 CPU workers (experiment=reverse_words), and measure exact match and
ROUGE-L on the held-out test words before and after each run with `shardtune eval --compare-base`.
Prints the table of docs/learning_demo.md.

Run from the repository root:  python scripts/learning_demo.py [--out runs/learning-demo] [--runs full-ddp lora-ddp] [overrides ...]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from make_tiny_base import train_loop_seconds

REPO = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 10  # answers are at most 6 letters; a model that does not stop is cut here and scores 0
# Full fine-tuning updates every weight, and a third of LoRA's learning rate suits it better.
RUNS = {
    "full-zero2": ["method=full", "strategy=zero2", "optim.lr=1e-3"],
    "full-ddp": ["method=full", "strategy=ddp", "optim.lr=1e-3"],
    "lora-ddp": ["method=lora", "strategy=ddp"],
    "qlora-ddp": ["method=qlora", "strategy=ddp"],
}


def cpu_seconds() -> float:
    """User and system CPU time of this process and of the finished children (the torchrun workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_one(name: str, overrides: list, run_dir: Path) -> dict:
    started = time.time()
    command = [sys.executable, "-m", "shardtune.cli", "train", "experiment=reverse_words", *overrides,
               f"output_dir={run_dir}"]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    command_s = time.time() - started
    # Generating with a 1M-parameter model is small matrix work: on a busy machine two OpenMP threads wait
    # on each other (measured: 1 s with one thread against 5-40 s with two).
    subprocess.run([sys.executable, "-m", "shardtune.cli", "eval", str(run_dir), "--compare-base",
                    "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "64"],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    results = json.loads((run_dir / "eval.json").read_text())
    for sample in results["samples"][:2]:
        print(f"{name}: {sample['prompt'].split('Input: ')[-1].splitlines()[0]!r}: before "
              f"{sample['base_prediction']!r}, after {sample['prediction']!r}")
    return {"run": name, "overrides": " ".join(overrides), "train_s": train_loop_seconds(run_dir),
            "command_s": command_s, "before": results["base"], "after": results["model"],
            "num_rows": results["num_generated"]}


def markdown_table(results: list) -> str:
    lines = ["| run | overrides | train loop | whole command | exact match before -> after | ROUGE-L before -> after |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run']} | `{r['overrides']}` | {r['train_s']:.0f} s | {r['command_s']:.0f} s | "
                     f"{r['before']['exact_match']:.3f} -> {r['after']['exact_match']:.3f} | "
                     f"{r['before']['rouge_l']:.3f} -> {r['after']['rouge_l']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "learning-demo",
                        help="parent of the run directories (each must not hold a run yet)")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. train.max_steps=100")
    args = parser.parse_args()
    started, cpu_started = time.time(), cpu_seconds()
    results = [run_one(name, RUNS[name] + args.overrides, args.out.resolve() / name) for name in args.runs]
    print(f"\n{results[0]['num_rows']} test rows, greedy decoding of at most {MAX_NEW_TOKENS} new tokens\n")
    print(markdown_table(results))
    print(f"\nwhole demo: {time.time() - started:.0f} s wall, {cpu_seconds() - cpu_started:.0f} s CPU (all processes)")


if __name__ == "__main__":
    main()
