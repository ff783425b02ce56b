"""resume=auto continues from the newest complete checkpoint and gives the losses of an uninterrupted
run; a checkpoint without its COMPLETE marker is never picked."""
import shutil

import pytest

from conftest import SHARED_RUNS, read_metrics, run_shardtune, train_losses

# LoRA on DDP resumes through the same torch.distributed.checkpoint code as LoRA on FSDP (and the matrix
# and export tests load its checkpoints); it is left out to keep the suite short.
CASES = [("lora", "fsdp"), ("full", "zero3"), ("qlora", "fsdp")]


@pytest.mark.parametrize("pair", CASES, ids=lambda p: "-".join(p))
def test_resume_matches_uninterrupted_run(tmp_path, shared_run, pair):
    # The uninterrupted run is the pair's shared run (FAST, checkpoints at steps 4 and 8, all kept).
    name = "-".join(pair)
    overrides, uninterrupted = SHARED_RUNS[name], shared_run(name)
    assert sorted(p.name for p in (uninterrupted / "checkpoints").iterdir()) == ["step-4", "step-8"]

    # An interrupted run: step 8's save never completed (no marker) and final/ was never written.
    interrupted = tmp_path / "interrupted"
    shutil.copytree(uninterrupted, interrupted)
    shutil.rmtree(interrupted / "final")
    (interrupted / "checkpoints" / "step-8" / "COMPLETE").unlink()
    result = run_shardtune("train", *overrides, f"output_dir={interrupted}", "resume=auto")
    assert f"resuming from {interrupted / 'checkpoints' / 'step-4'} at step 4" in result.stderr

    expected, resumed = train_losses(uninterrupted), train_losses(interrupted)
    assert sorted(resumed) == list(range(1, 9))
    rows = [row for row in read_metrics(interrupted) if "loss" in row]
    assert [row["step"] for row in rows] == list(range(1, 9)), "a step was logged twice or lost"
    # Steps 1-4 are the interrupted run's own records, kept; steps 5-8 were trained again.
    original_times = {row["step"]: row["time"] for row in read_metrics(uninterrupted) if "loss" in row}
    assert all(row["time"] == original_times[row["step"]] for row in rows[:4])
    assert all(row["time"] > original_times[8] for row in rows[4:])
    for step in range(5, 9):  # the steps the resumed run trained itself
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
    assert (interrupted / "final").is_dir()
    assert (interrupted / "checkpoints" / "step-8" / "COMPLETE").exists()  # rewritten by the resumed run
