"""A worker killed with SIGKILL mid-run. With launcher.max_restarts=1 torchrun restarts the workers, they resume from
the newest complete checkpoint by themselves (the run says resume=none) and finish with the uninterrupted run's
losses; metrics.jsonl and the W&B run hold each step once. With max_restarts=0 the run fails at once, naming the
rank and the signal."""
import re
import time

import pytest

from conftest import FAST, read_metrics, run_shardtune, train_losses
from fault_runs import BackgroundRun

STEPS = 30
RUN = ["method=lora", "method.dropout=0", *FAST, f"train.max_steps={STEPS}", "train.save_interval=4",
       "logger=wandb"]  # W&B offline (run_shardtune)


def wandb_steps(output_dir) -> list:
    """The training steps logged to W&B, in the order of its offline runs (all with the run directory's one id)."""
    from wandb_reader import history_and_summary
    run_id = (output_dir / "wandb_run_id").read_text().strip()
    runs = sorted((output_dir / "wandb").glob("offline-run-*"))
    assert runs and all(run.name.endswith(f"-{run_id}") for run in runs), "W&B started a second run id"
    return [(row["_step"], row["loss"]) for run in runs for row in history_and_summary(run)[0] if "loss" in row]


def test_killed_worker_is_restarted_and_the_run_loses_only_steps_since_the_checkpoint(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    run_shardtune("train", *RUN, f"output_dir={uninterrupted}")

    restarted = tmp_path / "restarted"
    run = BackgroundRun(restarted, *RUN, "launcher.max_restarts=1")
    run.wait_for_step(6)  # past the checkpoint of step 4
    run.worker(1).kill()  # SIGKILL: no handler, no checkpoint, no goodbye
    result = run.finish()
    assert result.returncode == 0, result.stderr[-4000:]

    resumed = re.search(r"restart 1 of the workers: resuming from (\S+) at step (\d+)", result.stderr)
    assert resumed, result.stderr[-4000:]
    checkpoint_step = int(resumed.group(2))
    assert 4 <= checkpoint_step < STEPS and checkpoint_step % 4 == 0

    rows = [row for row in read_metrics(restarted) if "loss" in row]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1)), "a step was logged twice or lost"
    expected, losses = train_losses(uninterrupted), train_losses(restarted)
    for step in range(checkpoint_step + 1, STEPS + 1):  # the steps trained again after the restart
        assert losses[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
    # W&B: each step once, from whichever attempt logged it first; the redone steps were not logged again.
    logged = wandb_steps(restarted)
    assert [step for step, _ in logged] == list(range(1, STEPS + 1))
    for step, loss in logged:
        assert loss == pytest.approx(expected[step], rel=1e-5), f"W&B step {step}"
    assert (restarted / "final").is_dir()


def test_killed_worker_without_restarts_fails_at_once_naming_rank_and_signal(tmp_path):
    run = BackgroundRun(tmp_path / "run", *RUN)  # launcher.max_restarts=0, the default
    run.wait_for_step(2)
    run.worker(1).kill()
    killed = time.monotonic()
    result = run.finish()
    assert result.returncode == 1
    assert "shardtune: rank 1 was killed by SIGKILL" in result.stderr, result.stderr[-4000:]
    # At once: the surviving rank's next collective fails; nothing waits for torchrun's 30 s shutdown timeout.
    assert time.monotonic() - killed < 20
