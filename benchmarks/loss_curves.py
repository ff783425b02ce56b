"""Loss curves of several settings of the GPU fast-path test's model, run side by side on one GPU, compared with the
first: the largest relative difference after warm-up and the step it is at. For telling the fast path's drift from
the drift any bf16 rounding change causes. From the repository root on the GPU machine:
    python3 benchmarks/loss_curves.py OUT_DIR "method=full strategy=fsdp optim.lr=1e-3 train.kernels=none" "..." ...
"""
import json
import subprocess
import sys
from pathlib import Path

sys.path[:0] = ["tests/gpu", "tests"]
from test_gpu_fast_path import RUN, WARMUP  # noqa: E402  the test's model and schedule


def losses(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def main(out: str, *settings: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    runs = []
    for index, setting in enumerate(settings):
        run_dir = Path(out, f"run{index}")
        log = open(Path(out, f"run{index}.log"), "w")
        runs.append((setting, run_dir, subprocess.Popen(
            [sys.executable, "-m", "shardtune.cli", "train", *RUN, *setting.split(), f"output_dir={run_dir}"],
            stdout=log, stderr=subprocess.STDOUT)))
    reference = None
    for setting, run_dir, process in runs:
        if process.wait() != 0:
            print(json.dumps({"setting": setting, "error": f"exit {process.returncode}, see {run_dir}.log"}))
            continue
        curve = losses(run_dir)
        reference = reference or curve
        worst = max((abs(curve[s] / reference[s] - 1), s) for s in curve if s > WARMUP)
        print(json.dumps({"setting": setting, "first": curve[1], "last": curve[max(curve)],
                          "max_rel_diff": round(worst[0], 5), "at_step": worst[1]}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
