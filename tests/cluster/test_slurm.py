"""Slurm, for real: scripts/local_slurm.sh starts a single-host Slurm with two nodes (n1, n2); shardtune
submits through its Slurm backend (sbatch, one srun task per node running torchrun, c10d rendezvous),
and the tests wait for the jobs and read what they wrote.

The second run is sent the pre-time-limit signal early (`scancel --signal=USR1`, which is what Slurm's
`--signal=USR1@N` does N seconds before the limit), or SIGTERM (what a preemption sends): it must save a
checkpoint, requeue itself, resume, and give the uninterrupted run's losses, with W&B continuing one run and no
step logged twice. Inside an
allocation, `srun --ntasks-per-node=1 shardtune train ...` takes nodes, rank and rendezvous from Slurm.
"""
import json
import os
import re
import subprocess
import sys

import pytest
from cluster_env import job_finished, job_state, start_local_slurm, wait_for_job
from conftest import FAST, final_val_loss, read_metrics, run_shardtune, train_losses

STEPS = 30  # long enough that the signal (sent after step 2) lands mid-run, not after the last step
RUN = ["cluster=slurm", "cluster.nodes=2", "launcher.nproc_per_node=2", "method=lora", "method.dropout=0",
       "logger=wandb", *FAST, f"train.max_steps={STEPS}"]


@pytest.fixture(scope="module")
def slurm():
    start_local_slurm()


def submit(output_dir) -> str:
    result = run_shardtune("train", *RUN, f"output_dir={output_dir}")
    job_id = (output_dir / "slurm" / "job_id").read_text().strip()
    assert f"submitted Slurm job {job_id}: 2 node(s) x 2 worker(s)" in result.stdout
    assert f"log     {output_dir / 'slurm' / f'{job_id}.out'}" in result.stdout
    return job_id


def logged_steps(output_dir) -> int:
    path = output_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("slurm") / "uninterrupted"
    job_id = submit(output_dir)
    wait_for_job(job_id, lambda: job_finished(job_id), deadline_s=300)
    return output_dir, job_id


def wandb_history(output_dir, readable_only: bool = False) -> list:
    """(steps logged to each offline W&B run of output_dir, in order), all under one run id; readable_only: leave
    out runs whose file W&B never finished writing (its process was stopped)."""
    from wandb_reader import history_and_summary
    run_id = (output_dir / "wandb_run_id").read_text().strip()
    runs = sorted((output_dir / "wandb").glob("offline-run-*"))
    assert runs and all(run.name.endswith(f"-{run_id}") for run in runs), "W&B started a second run id"
    histories = []
    for run in runs:
        try:
            histories.append([row["_step"] for row in history_and_summary(run)[0] if "loss" in row])
        except StopIteration:  # no run record in the file
            if not readable_only:
                raise
    return histories


def test_run_trains_on_two_nodes_through_sbatch(uninterrupted):
    output_dir, job_id = uninterrupted
    log = (output_dir / "slurm" / f"{job_id}.out").read_text()
    assert job_state(job_id) == "COMPLETED", log[-3000:]
    assert re.search(r"on n\[1-2\], rendezvous 127\.0\.0\.1:\d+\n", log) and "world size 4" in log
    losses = train_losses(output_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 0.3
    assert (output_dir / "final" / "adapter_model.safetensors").is_file()
    assert "#SBATCH --nodes=2" in (output_dir / "slurm" / "job.sbatch").read_text()
    status = run_shardtune("status", str(output_dir)).stdout
    assert f"job {job_id}: COMPLETED" in status and f"last logged step: {STEPS}; final model: written" in status


@pytest.mark.parametrize("signal_name", ["USR1", "TERM"])
def test_signal_checkpoints_requeues_and_resumes(uninterrupted, tmp_path, signal_name):
    output_dir = tmp_path / "preempted"
    job_id = submit(output_dir)
    wait_for_job(job_id, lambda: logged_steps(output_dir) >= 2 or job_finished(job_id), deadline_s=240, poll_s=0.1)
    # USR1: what Slurm does `signal_before_limit_s` before the time limit, sent now. TERM: a preemption's signal to
    # the job's tasks.
    subprocess.run(["scancel", f"--signal={signal_name}", job_id], check=True)

    def requeued():  # back in the queue, waiting for its begin time
        fields = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True,
                                text=True).stdout
        return ("Restarts=1" in fields and "JobState=PENDING" in fields) or job_finished(job_id)
    wait_for_job(job_id, requeued, deadline_s=120)
    # Slurm holds a requeued job for cred_expire seconds (10 in scripts/local_slurm.sh) before it starts
    # again on its own.
    wait_for_job(job_id, lambda: job_finished(job_id), deadline_s=300)

    # A stopped task may leave a character of its progress bar cut in two before the requeued run's output.
    log = (output_dir / "slurm" / f"{job_id}.out").read_text(errors="replace")
    assert job_state(job_id) == "COMPLETED", log[-3000:]
    assert f"requeueing job {job_id}" in log and f"job {job_id} (restart 1)" in log
    checkpoints = sorted((output_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and (checkpoints[0] / "COMPLETE").exists()
    stopped_at = int(checkpoints[0].name.removeprefix("step-"))
    assert 1 <= stopped_at < STEPS, f"the signal came too late to test preemption (step {stopped_at})"
    assert f"resuming from {checkpoints[0]} at step {stopped_at}" in log
    assert not (output_dir / "PREEMPTED").exists()

    rows = [row for row in read_metrics(output_dir) if "loss" in row]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1)), "a step was logged twice or lost"
    expected, resumed = train_losses(uninterrupted[0]), train_losses(output_dir)
    for step in range(1, STEPS + 1):  # the same math on the same topology, before and after the requeue
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"
    if signal_name == "USR1":
        first, second = wandb_history(output_dir)
        assert first == list(range(1, stopped_at + 1)) and second == list(range(stopped_at + 1, STEPS + 1))
    else:  # SIGTERM reaches W&B's own process too, which stops at once: the first offline file may be cut short
        assert "W&B stopped answering" in log or len(wandb_history(output_dir, readable_only=True)) == 2
        assert wandb_history(output_dir, readable_only=True)[-1] == list(range(stopped_at + 1, STEPS + 1))


def test_cancel_stops_a_submitted_job(slurm, tmp_path):
    output_dir = tmp_path / "cancelled"
    job_id = submit(output_dir)
    result = run_shardtune("cancel", str(output_dir))
    assert f"cancelled Slurm job {job_id}" in result.stdout
    wait_for_job(job_id, lambda: job_finished(job_id), deadline_s=60)
    assert job_state(job_id) == "CANCELLED"
    assert f"job {job_id}: CANCELLED" in run_shardtune("status", str(output_dir)).stdout


def test_srun_step_takes_nodes_rank_and_rendezvous_from_slurm(slurm, tmp_path):
    """`srun --ntasks-per-node=1 shardtune train ...` inside an allocation: one command line for every node."""
    output_dir = tmp_path / "srun"
    result = subprocess.run(["srun", "--nodes=2", "--ntasks-per-node=1", sys.executable, "-m", "shardtune.cli", "train",
                             "launcher.device=cpu", "launcher.nproc_per_node=2", *FAST, f"output_dir={output_dir}"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for node in (0, 1):
        assert f"node {node} of 2, rendezvous at 127.0.0.1:29500 (n1)" in output
    assert "world size 4" in output
    assert sorted(train_losses(output_dir)) == list(range(1, 9))
    assert (output_dir / "launcher.log").is_file() and (output_dir / "launcher-node1.log").is_file()


def test_a_sweep_runs_each_trial_as_its_own_job(slurm, tmp_path):
    """`shardtune train -m cluster=slurm ...`: both trials are submitted before either ends, one node each (they may
    share a node: each job picks its own rendezvous port), and the sweep waits for them and reads their results."""
    sweep_dir = tmp_path / "sweep"
    result = run_shardtune("train", "-m", "cluster=slurm", "launcher.nproc_per_node=2", *FAST, "train.max_steps=4",
                           "train.eval_interval=2", "optim.lr=1e-3,3e-3", "sweep.poll_interval_s=1",
                           f"hydra.sweep.dir={sweep_dir}")
    records = [json.loads((sweep_dir / f"trial-{n}" / "trial.json").read_text()) for n in (0, 1)]
    assert [record["status"] for record in records] == ["completed", "completed"], records
    job_ids = [record["slurm_job_id"] for record in records]
    assert len(set(job_ids)) == 2 and all(job_state(job_id) == "COMPLETED" for job_id in job_ids)
    output = result.stdout + result.stderr
    submitted = [output.index(f"submitted Slurm job {job_id}") for job_id in job_ids]
    ended = [output.index(f"Slurm job {job_id} ended") for job_id in job_ids]
    assert max(submitted) < min(ended), "the second job was submitted only after the first ended"
    for record in records:
        assert record["value"] == pytest.approx(final_val_loss(record["run_dir"]))
    assert len((sweep_dir / "results.csv").read_text().splitlines()) == 3
