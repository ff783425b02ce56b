"""Faults while a checkpoint is being saved: a rank killed in the middle of writing, a disk that fills up. The checkpoint
being written is never resumed from and never left looking complete; the earlier complete one survives, and
train.keep_checkpoints deletes it only once a newer one is complete. The faults are injected with
SHARDTUNE_INJECT_SAVE_FAULT (trainer/save_faults.py says why), or with a real, small tmpfs where mounting is allowed."""
import subprocess

import pytest

from conftest import FAST, read_metrics, run_shardtune, train_losses
from fault_runs import BackgroundRun
from shardtune.run_dir import checkpoint_dir, checkpoint_root, complete_checkpoints

RUN = ["method=lora", "method.dropout=0", *FAST, "train.save_interval=2", "train.keep_checkpoints=1"]


@pytest.mark.parametrize("async_checkpoint", [False, True], ids=["sync", "async"])
def test_kill_in_the_middle_of_a_save_resumes_from_the_previous_complete_checkpoint(tmp_path, shared_run,
                                                                                    async_checkpoint):
    """Rank 1 writes its shards of step 4's checkpoint, then stops writing; SIGKILL. torchrun restarts the workers
    (launcher.max_restarts=1), which resume from step 2's checkpoint and finish with the uninterrupted losses. With
    train.async_checkpoint the steps go on while rank 1's background writer is stuck: training waits only at the
    next save (step 6), for the unfinished one."""
    output_dir = tmp_path / "run"
    run = BackgroundRun(output_dir, *RUN, "launcher.max_restarts=1", f"train.async_checkpoint={async_checkpoint}",
                        env={"SHARDTUNE_INJECT_SAVE_FAULT": "1:4:pause"})
    run.wait_for_path(checkpoint_dir(output_dir, 4) / "state" / "__1_0.distcp")
    if async_checkpoint:
        assert run.wait_for_step(6) == 6  # trained on while step 4's checkpoint was being written; then waits
    # Mid-save: step 2's checkpoint is kept (keep_checkpoints=1) and step 4's does not count yet.
    assert complete_checkpoints(output_dir) == [checkpoint_dir(output_dir, 2)]
    run.worker(1).kill()
    result = run.finish()
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"restart 1 of the workers: resuming from {checkpoint_dir(output_dir, 2)} at step 2" in result.stderr

    expected, losses = train_losses(shared_run("lora-ddp")), train_losses(output_dir)
    assert sorted(losses) == list(range(1, 9))
    for step in range(1, 9):  # steps 3-8 trained again after the restart; async saves change no loss either
        assert losses[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
    # The newest complete checkpoint, and no debris of the one that was cut off.
    assert sorted(checkpoint_root(output_dir).iterdir()) == [checkpoint_dir(output_dir, 8)]
    assert complete_checkpoints(output_dir) == [checkpoint_dir(output_dir, 8)]


@pytest.mark.parametrize("async_checkpoint", [False, True], ids=["sync", "async"])
def test_full_disk_while_saving_stops_with_the_path_and_the_space_needed(tmp_path, async_checkpoint):
    """Rank 1's writer gets ENOSPC after writing its shards of step 4's checkpoint."""
    output_dir = tmp_path / "run"
    result = run_shardtune("train", *RUN, "train.max_steps=6", f"train.async_checkpoint={async_checkpoint}",
                           f"output_dir={output_dir}", check=False, env={"SHARDTUNE_INJECT_SAVE_FAULT": "1:4:enospc"})
    assert result.returncode == 1
    partial = checkpoint_dir(output_dir, 4)
    for rank in (0, 1):  # every rank stops alike, naming the path, the cause and the space the checkpoint needs
        assert (f"[rank{rank}]: shardtune.trainer.checkpoint.CheckpointError: saving checkpoint {partial} failed: "
                f"OSError on rank 1: [Errno 28] No space left on device") in result.stderr, result.stderr[-4000:]
    assert "; it needs about 1.8 MiB (" in result.stderr
    assert not partial.exists()  # removed, not left half-written
    assert complete_checkpoints(output_dir) == [checkpoint_dir(output_dir, 2)]
    # Sync: the save after step 4 failed. Async: training went on while it was written, until the first step whose
    # all-reduce found it finished on every rank, or at the latest the save of step 6, which waits for it.
    steps = [row["step"] for row in read_metrics(output_dir)]
    assert steps == list(range(1, len(steps) + 1))  # metrics.jsonl intact
    assert 4 <= len(steps) <= 6 if async_checkpoint else len(steps) == 4


def test_checkpoint_that_cannot_fit_is_refused_before_writing(tmp_path):
    """A real full disk: a 3 MiB tmpfs holds one checkpoint (about 2.3 MB) but not two; keep_checkpoints=0 keeps
    the first. The second save is refused before a byte is written."""
    output_dir = tmp_path / "run"
    checkpoints = checkpoint_root(output_dir)
    checkpoints.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(checkpoints)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        result = run_shardtune("train", *RUN, "train.keep_checkpoints=0", f"output_dir={output_dir}",
                               "resume=auto", check=False)  # auto: the mount point makes the directory look used
        assert result.returncode == 1
        for rank in (0, 1):
            assert (f"[rank{rank}]: shardtune.trainer.checkpoint.CheckpointError: no space for checkpoint "
                    f"{checkpoint_dir(output_dir, 4)}: it needs about 1.8 MiB (") in result.stderr, result.stderr[-4000:]
        assert f"but {checkpoints} has " in result.stderr and "lower train.keep_checkpoints" in result.stderr
        assert sorted(checkpoints.iterdir()) == [checkpoint_dir(output_dir, 2)]
        assert complete_checkpoints(output_dir) == [checkpoint_dir(output_dir, 2)]
        assert [row["step"] for row in read_metrics(output_dir)] == [1, 2, 3, 4]
    finally:
        subprocess.run(["umount", str(checkpoints)], check=True)
