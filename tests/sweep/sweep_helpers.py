"""What the sweep tests share: the trial settings (tiny runs of 4 steps with two validations) and readers."""
import csv
import json

TRIAL = ["train.max_steps=4", "train.seq_len=64", "train.micro_batch_size=4", "train.log_interval=2",
         "train.eval_interval=2", "train.eval_max_batches=4", "optim.warmup_steps=0"]


def results(sweep_dir) -> list:
    with open(sweep_dir / "results.csv") as handle:
        return list(csv.DictReader(handle))


def trial_record(run_dir) -> dict:
    return json.loads((run_dir / "trial.json").read_text())
