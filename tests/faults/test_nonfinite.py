"""A loss that becomes NaN or inf on one rank only: every rank stops after the same step, or, with
train.skip_nonfinite_steps=N, skips up to N such steps (no update, logged) before stopping. The faults are injected
with SHARDTUNE_INJECT_NONFINITE (trainer/nonfinite.py says why)."""
import pytest

from conftest import FAST, read_metrics, run_shardtune
from shardtune.run_dir import checkpoint_dir

RUN = ["method=lora", "method.dropout=0", *FAST, "train.max_steps=8"]


def train_with_faults(output_dir, faults: str, *overrides: str):
    return run_shardtune("train", *RUN, *overrides, f"output_dir={output_dir}", check=False,
                         env={"SHARDTUNE_INJECT_NONFINITE": faults})


def test_nan_loss_on_one_rank_stops_every_rank_after_that_step(tmp_path):
    result = train_with_faults(tmp_path / "run", "1:3:nan")  # rank 1's loss at step 3
    assert result.returncode == 1
    for rank in (0, 1):  # both ranks saw the NaN gradient norm, though only rank 1's loss was NaN
        assert f"[rank{rank}]: FloatingPointError: gradient norm is nan at step 3" in result.stderr, result.stderr[-4000:]
    assert [row["step"] for row in read_metrics(tmp_path / "run")] == [1, 2]


def test_deepspeed_bf16_stops_on_the_norm_without_its_own_overflow_check(tmp_path):
    # shardtune turns DeepSpeed's bf16 overflow check off (strategies/deepspeed.py says why): DeepSpeed then applies
    # the bad step, and the loop must stop right after it, on the gradient norm, before anything is saved.
    result = run_shardtune("train", "method=full", "strategy=zero2", "train.precision=bf16", *FAST,
                           "train.save_interval=3", f"output_dir={tmp_path / 'run'}", check=False,
                           env={"SHARDTUNE_INJECT_NONFINITE": "1:3:nan"})
    assert result.returncode == 1
    assert "FloatingPointError: gradient norm is inf at step 3" in result.stderr, result.stderr[-4000:]
    assert [row["step"] for row in read_metrics(tmp_path / "run")] == [1, 2]
    assert not checkpoint_dir(tmp_path / "run", 3).exists()


def test_bad_steps_are_skipped_up_to_the_limit(tmp_path):
    # Rank 1's loss NaN at step 3 (skipped); at step 5 rank 0's loss is finite but its gradients overflow (an inf
    # gradient norm; no skip left).
    result = train_with_faults(tmp_path / "run", "1:3:nan,0:5:overflow", "train.skip_nonfinite_steps=1")
    assert result.returncode == 1
    assert "step 3 skipped: gradient norm is nan" in result.stderr and "(1 of train.skip_nonfinite_steps=1)" in result.stderr
    assert ("gradient norm is inf at step 5: training diverged (optim.lr too high?) or some rank's loss was NaN or "
            "inf; stopping after 1 skipped step(s) (train.skip_nonfinite_steps=1)") in result.stderr, result.stderr[-4000:]
    rows = read_metrics(tmp_path / "run")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert rows[2] == {"step": 3, "time": pytest.approx(rows[2]["time"]), "skipped_nonfinite": 1,
                       "lr": pytest.approx(rows[2]["lr"])}  # no loss: the skipped step's is not a number
    assert all(row["loss"] == row["loss"] for row in rows if row["step"] != 3)  # finite: the NaN never got in
    assert rows[3]["lr"] < rows[2]["lr"]  # the schedule moved on past the skipped step
