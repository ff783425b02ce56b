"""Build shardtune/assets/tiny-base (model=tiny_base): the tiny model pretrained on word skills.

LoRA trains neither the embeddings nor the output head, so on a randomly initialised model it can
barely learn anything; the learning demo (experiment=reverse_words) starts from this base instead.

1. `shardtune train experiment=tiny_base`: full fine-tuning of model=tiny from random weights on
   assets/data/string_skills.jsonl (copy, uppercase, shift, sort, swap the ends, repeat; never
   reversal), 3000 steps on 2 CPU workers, about 15 minutes on 2 cores. Skipped when the run directory
   already holds final/, so a finished run can be shipped again without training.
2. The weights are written in bf16 (about 1.7 MB) with the tokenizer, then scored on the held-out
   test words of the demo (words no training file contains): the skills must be learned (exact match
   >= SKILL_MIN) and reversal must not be (<= REVERSAL_MAX), else the base is not shipped.
3. base_card.json records how it was made: command, commit, loss, scores.

Re-running on another machine gives a base of the same quality, not the same bits (float order).

Run from the repository root:  python scripts/make_tiny_base.py [--run-dir runs/tiny-base] [overrides ...]
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from make_task_data import REVERSE_INSTRUCTION, SKILLS

from shardtune.config import asset_path
from shardtune.data.formats import format_prompt
from shardtune.evaluation import greedy_generate, mean_scores

REPO = Path(__file__).resolve().parents[1]
BASE_DIR = Path(asset_path("tiny-base"))
TOKENIZER_DIR = Path(asset_path("tiny-tokenizer"))
TEST_PATH = Path(asset_path("data/reverse_words/test.jsonl"))
TRAIN_COMMAND = [sys.executable, "-m", "shardtune.cli", "train", "experiment=tiny_base"]
# What the base is made from (git pathspecs), for base_card.json's commit: the scripts and shardtune itself.
BASE_INPUTS = ["scripts/make_tiny_base.py", "scripts/make_task_data.py", "shardtune", ":(exclude)shardtune/assets/tiny-base"]
SKILL_MIN = 0.8
REVERSAL_MAX = 0.05


def train(run_dir: Path, overrides: list) -> float:
    """Run the pretraining unless run_dir/final exists; return its wall time in seconds (0 if skipped)."""
    if (run_dir / "final").is_dir():
        print(f"{run_dir}/final exists: not training again")
        return 0.0
    started = time.time()
    subprocess.run(TRAIN_COMMAND + [f"output_dir={run_dir}", *overrides], check=True, cwd=REPO)
    return time.time() - started


def write_base(final_dir: Path, parent: Path) -> Path:
    """A new directory under `parent` with bf16 weights, config and generation config, plus the tiny
    tokenizer: a complete model directory."""
    model = AutoModelForCausalLM.from_pretrained(final_dir, dtype=torch.bfloat16)
    model.config.use_cache = True  # training turned it off; whoever generates with the base wants it
    staging = Path(tempfile.mkdtemp(prefix="tiny-base-", dir=parent))
    model.save_pretrained(staging, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, staging / name)
    staging.chmod(0o755)  # mkdtemp makes it private; an installed package must be readable by all
    for path in staging.iterdir():
        path.chmod(0o644)
    return staging


def score_base(base_dir: Path) -> dict:
    """Exact match of the base (loaded in fp32, as training loads it on CPU) on the held-out test words,
    per pretraining skill and for reversal."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    words = [json.loads(line)["input"] for line in TEST_PATH.read_text().splitlines()]
    scores = {}
    for instruction, answer in [*dict(SKILLS).items(), (REVERSE_INSTRUCTION, lambda word: word[::-1])]:
        predictions = greedy_generate(model, tokenizer, [format_prompt(instruction, word) for word in words],
                                      max_new_tokens=20, batch_size=64)
        scores[instruction] = mean_scores(predictions, [answer(word) for word in words])["exact_match"]
    return scores


def read_metrics(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_loop_seconds(run_dir: Path) -> float:
    """Time in optimizer steps, from the mean step time of each logged interval (no start-up, no export)."""
    seconds, previous_step = 0.0, 0
    for row in read_metrics(run_dir):
        if "step_time_s" in row:
            seconds += row["step_time_s"] * (row["step"] - previous_step)
            previous_step = row["step"]
    return seconds


def metrics_summary(run_dir: Path) -> dict:
    rows = read_metrics(run_dir)
    losses = [row for row in rows if "loss" in row]
    val = [row["val/loss"] for row in rows if "val/loss" in row]
    return {"steps": losses[-1]["step"], "train_loop_s": round(train_loop_seconds(run_dir), 1),
            "final_train_loss": losses[-1]["loss"], "final_val_loss": val[-1] if val else None}


def git_commit() -> str:
    """HEAD, marked when any input of the base (scripts, configs, data) differs from it."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--", *BASE_INPUTS], capture_output=True, text=True,
                             cwd=REPO).stdout.strip()
    return commit + (" with uncommitted changes to its inputs" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "tiny-base",
                        help="run directory of the pretraining (default: runs/tiny-base)")
    parser.add_argument("--output", type=Path, default=BASE_DIR, help=f"where the base goes (default: {BASE_DIR})")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for the pretraining, e.g. train.seed=7")
    args = parser.parse_args()
    run_dir, output = args.run_dir.resolve(), args.output.resolve()
    train_wall_s = train(run_dir, args.overrides)
    # Written and scored beside the output first: a base that fails the checks replaces nothing.
    staging = write_base(run_dir / "final", output.parent)
    scores = score_base(staging)
    skills = {name: value for name, value in scores.items() if name != REVERSE_INSTRUCTION}
    card = {
        "made_by": "scripts/make_tiny_base.py",
        "command": " ".join(["shardtune", *TRAIN_COMMAND[3:], *args.overrides]),
        "git_commit": git_commit(),
        "train_wall_s": round(train_wall_s, 1) or None,
        **metrics_summary(run_dir),
        "dtype": "bfloat16",
        "size_bytes": (staging / "model.safetensors").stat().st_size,
        "exact_match_on_held_out_words": scores,
    }
    (staging / "base_card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))
    if min(skills.values()) < SKILL_MIN or scores[REVERSE_INSTRUCTION] > REVERSAL_MAX:
        sys.exit(f"not written to {output}: skills must reach {SKILL_MIN} and reversal stay <= {REVERSAL_MAX} "
                 f"(the base is in {staging}); train longer or with another seed: "
                 f"python scripts/make_tiny_base.py --run-dir <new> train.seed=7")
    shutil.rmtree(output, ignore_errors=True)
    staging.rename(output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
