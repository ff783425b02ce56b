"""GPU benchmark of packing: the same variable-length examples trained unpacked and packed.

    python benchmarks/packing.py [--method lora] [--strategy ddp] [--steps 30] [--packed-only] [--extra OVERRIDE...]

Writes completion rows of random bytes whose lengths spread from 64 to 2048 tokens (mean about 450,
like instruction data), then trains the Llama-3.2-1B-shaped random model of benchmarks/run.py on them
twice: micro batch 4 padded to the longest row, and packed into rows of 2048. Reports real (unpadded)
tokens per second and peak memory per case as JSON lines. Same model, data and steps.
"""
import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from run import random_model

SEQ_LEN, MICRO_BATCH = 2048, 4


def write_rows(path: Path, num_rows: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(num_rows):
            length = min(SEQ_LEN - 1, max(64, int(rng.lognormvariate(5.8, 0.7))))
            f.write(json.dumps({"text": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(length))}) + "\n")


def run(method: str, strategy: str, steps: int, data: Path, packing: bool, extra: list) -> dict:
    output_dir = Path(f"/tmp/bench-packing/{method}-{strategy}-{'packed' if packing else 'padded'}")
    subprocess.run(["rm", "-rf", str(output_dir)], check=True)
    overrides = ["model=llama3.2-1b", f"model.name_or_path={random_model('1b')}", "model.tokenizer=${asset:tiny-tokenizer}",
                 f"method={method}", f"strategy={strategy}", "data.format=completion", f"data.path={data}",
                 "data.val_fraction=0", f"data.packing={str(packing).lower()}", f"train.max_steps={steps}",
                 f"train.micro_batch_size={MICRO_BATCH}", f"train.seq_len={SEQ_LEN}", "train.log_interval=1",
                 "train.save_final=false", "train.eval_interval=0", "launcher.nproc_per_node=1",
                 f"output_dir={output_dir}", *extra]
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "shardtune.cli", "train", *overrides], capture_output=True, text=True)
    if result.returncode != 0:
        return {"case": output_dir.name, "error": (result.stdout + result.stderr)[-3000:]}
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if "step_time_s" in r and r["step"] > 5]
    return {"case": " ".join([output_dir.name, *extra]), "packing": packing,
            "real_tokens_per_s": round(statistics.median(r["tokens_per_second"] for r in steady)),
            "step_s": round(statistics.median(r["step_time_s"] for r in steady), 4),
            "peak_mem_gib": max(r.get("peak_mem_alloc_gib", 0) for r in rows),
            "wall_s": round(time.time() - started, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="lora")
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--packed-only", action="store_true", help="skip the padded run")
    parser.add_argument("--extra", nargs="*", default=[], help="extra shardtune overrides for every run")
    args = parser.parse_args()
    data = Path("/tmp/bench-packing/rows.jsonl")
    data.parent.mkdir(parents=True, exist_ok=True)
    write_rows(data, num_rows=4000)
    for packing in (True,) if args.packed_only else (False, True):
        print(json.dumps(run(args.method, args.strategy, args.steps, data, packing, args.extra)), flush=True)


if __name__ == "__main__":
    main()
