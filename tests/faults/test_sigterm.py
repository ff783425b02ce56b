"""SIGTERM (Slurm preemption, Kubernetes, `kill`) to the launcher or to one worker: every rank stops after the same
step with a complete checkpoint within train.grace_period_s, and the command exits non-zero (128 + SIGTERM) saying
where the checkpoint is. When the grace period passes first, it says that no checkpoint was written."""
import re
import signal

import pytest

from conftest import FAST, train_losses
from fault_runs import BackgroundRun
from shardtune.run_dir import PREEMPTED_MARKER, complete_checkpoints

RUN = ["method=lora", "method.dropout=0", *FAST, "train.max_steps=200"]  # long enough that SIGTERM lands mid-run


def stop_with_sigterm(output_dir, to: str, *overrides: str):
    run = BackgroundRun(output_dir, *RUN, *overrides)
    run.wait_for_step(2)
    worker = run.worker(1)
    (worker if to == "rank 1" else worker.parent()).send_signal(signal.SIGTERM)  # the launcher forks the workers
    return run.finish()


@pytest.mark.parametrize("to", ["launcher", "rank 1"])
def test_sigterm_checkpoints_every_rank_and_exits_non_zero(tmp_path, to):
    output_dir = tmp_path / "run"
    result = stop_with_sigterm(output_dir, to)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-4000:]
    stopped = re.search(r"shardtune: stopped by SIGTERM after step (\d+), checkpoint (\S+);", result.stderr)
    assert stopped, result.stderr[-4000:]
    step, checkpoint = int(stopped.group(1)), stopped.group(2)
    assert [str(path) for path in complete_checkpoints(output_dir)] == [checkpoint]
    assert checkpoint.endswith(f"step-{step}") and 2 <= step < 200
    assert sorted(train_losses(output_dir)) == list(range(1, step + 1))  # every rank stopped after that step
    assert (output_dir / PREEMPTED_MARKER).read_text().split() == [checkpoint, "SIGTERM"]  # Slurm requeues on it
    assert not (output_dir / "final").exists()


def test_sigterm_past_the_grace_period_exits_without_a_checkpoint(tmp_path):
    output_dir = tmp_path / "run"
    result = stop_with_sigterm(output_dir, "launcher", "train.grace_period_s=0")  # no time to finish a step
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-4000:]
    assert "shardtune: stopped by SIGTERM; no checkpoint was written within train.grace_period_s=0 s" in result.stderr
    assert complete_checkpoints(output_dir) == []
    assert not (output_dir / PREEMPTED_MARKER).exists()


def test_ctrl_c_stops_at_once_and_names_the_checkpoint_to_continue_from(tmp_path):
    """Ctrl-C in a terminal signals the launcher and its workers alike (one process group): they stop at once,
    without a checkpoint, and the command says which complete checkpoint resume=auto continues from."""
    output_dir = tmp_path / "run"
    run = BackgroundRun(output_dir, *RUN, "train.save_interval=2")
    run.wait_for_path(output_dir / "checkpoints" / "step-2" / "COMPLETE")
    workers = [run.worker(0), run.worker(1)]
    for process in [workers[0].parent(), *workers]:
        process.send_signal(signal.SIGINT)
    result = run.finish()
    assert result.returncode == 128 + signal.SIGINT, result.stderr[-4000:]
    newest = complete_checkpoints(output_dir)[-1]
    assert (f"shardtune: interrupted (Ctrl-C): stopped at once, without a checkpoint; the newest complete one is "
            f"{newest}; continue with resume=auto") in result.stderr, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
