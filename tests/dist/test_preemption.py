"""SIGUSR1 to one worker (what Slurm sends before a time limit) stops every rank after the same step with a
complete checkpoint and the PREEMPTED marker; resume=auto then gives the uninterrupted run's losses.
The Slurm round trip (requeue) is in tests/cluster/test_slurm.py; this runs without root."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import FAST, read_metrics, run_shardtune, train_losses

STEPS = 60  # long enough that the signal lands mid-run
RUN = ["method=lora", "method.dropout=0", *FAST, f"train.max_steps={STEPS}"]


def worker_of_rank(launcher: psutil.Process, rank: int) -> psutil.Process:
    """The worker of rank `rank` among the launcher's descendants: on CPU, forks of the launcher named by their
    rank (launcher/torchrun.py)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for process in launcher.children(recursive=True):
            try:
                if process.name() == f"shardtune-r{rank}":
                    return process
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)  # polling for the workers to appear, with a deadline
    pytest.fail("no worker process appeared")


def test_usr1_to_one_rank_checkpoints_all_and_resume_matches(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    run_shardtune("train", *RUN, f"output_dir={uninterrupted}")

    preempted = tmp_path / "preempted"
    launcher = subprocess.Popen([sys.executable, "-m", "shardtune.cli", "train", *RUN, f"output_dir={preempted}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "WANDB_MODE": "offline"})
    rank1 = worker_of_rank(psutil.Process(launcher.pid), rank=1)
    metrics = preempted / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2) and launcher.poll() is None:
        assert time.monotonic() < deadline, "the run logged no steps"
        time.sleep(0.1)  # polling for the first steps, with a deadline
    rank1.send_signal(signal.SIGUSR1)  # rank 0 never sees it: the step's all-reduce tells it
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output[-4000:]

    checkpoints = sorted((preempted / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and (checkpoints[0] / "COMPLETE").exists()
    stopped_at = int(checkpoints[0].name.removeprefix("step-"))
    assert 2 <= stopped_at < STEPS, f"the signal came too late to test preemption (step {stopped_at})"
    assert f"stopping at step {stopped_at} on SIGUSR1" in output
    assert (preempted / "PREEMPTED").read_text().strip() == str(checkpoints[0])
    assert not (preempted / "final").exists()
    assert sorted(train_losses(preempted)) == list(range(1, stopped_at + 1))

    result = run_shardtune("train", *RUN, f"output_dir={preempted}", "resume=auto")
    assert f"resuming from {checkpoints[0]} at step {stopped_at}" in result.stderr
    assert not (preempted / "PREEMPTED").exists()
    rows = [row for row in read_metrics(preempted) if "loss" in row]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1)), "a step was logged twice or lost"
    expected, resumed = train_losses(uninterrupted), train_losses(preempted)
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
