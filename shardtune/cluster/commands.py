"""`shardtune status <run_dir>` and `shardtune cancel <run_dir>`: the Slurm job of a run submitted with
cluster=slurm, found through the job id the submission left in <run_dir>/slurm/job_id."""
import argparse
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from ..run_dir import FINAL_DIR, last_logged_step
from .slurm import JOB_ID_FILE, SLURM_DIR, log_path, run_slurm_command


def job_id_of(run_dir: Path) -> str:
    path = run_dir / SLURM_DIR / JOB_ID_FILE
    if not path.is_file():
        sys.exit(f"shardtune: run_dir: {run_dir} has no Slurm job ({path} is missing); was it submitted with "
                 "cluster=slurm?")
    return path.read_text().strip()


def job_state(job_id: str) -> dict:
    """Slurm's fields of a job (JobState, Reason, RunTime, TimeLimit, NodeList, Restarts, ...), or {} when
    Slurm no longer knows it (finished longer ago than its MinJobAge)."""
    try:
        text = run_slurm_command(["scontrol", "show", "job", "--oneliner", job_id])
    except ConfigError as error:
        if "Invalid job id" in str(error):
            return {}
        raise
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


# States of a job that may still run (a requeued job goes back to PENDING with the same id).
ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                 "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED")


def wait_for_job(job_id: str, poll_interval_s: float) -> str:
    """Block until the job has ended; its final state, or "" once Slurm no longer lists it."""
    while True:
        state = job_state(job_id).get("JobState", "")
        if state not in ACTIVE_STATES:
            return state
        time.sleep(poll_interval_s)


def run_dir_and_job(argv, command: str, description: str) -> tuple:
    parser = argparse.ArgumentParser(prog=f"shardtune {command}", description=description)
    parser.add_argument("run_dir", type=Path)
    run_dir = parser.parse_args(argv).run_dir.absolute()
    return run_dir, job_id_of(run_dir)


def status_command(argv) -> None:
    run_dir, job_id = run_dir_and_job(argv, "status", "State of a run's Slurm job.")
    try:
        fields = job_state(job_id)
    except ConfigError as error:
        sys.exit(f"shardtune: {error}")
    if fields:
        state = f"{fields.get('JobState')} (reason {fields.get('Reason')}), run time {fields.get('RunTime')} of " \
                f"{fields.get('TimeLimit')}, nodes {fields.get('NodeList')}, restarts {fields.get('Restarts', 0)}"
    else:
        state = "no longer known to Slurm (finished a while ago)"
    print(f"job {job_id}: {state}")
    print(f"log: {log_path(run_dir, job_id)}")
    step = last_logged_step(run_dir)
    print(f"last logged step: {step if step is not None else 'none yet'}; final model: "
          f"{'written' if (run_dir / FINAL_DIR).is_dir() else 'not yet'}")


def cancel_command(argv) -> None:
    run_dir, job_id = run_dir_and_job(argv, "cancel", "Cancel a run's Slurm job.")
    try:
        run_slurm_command(["scancel", job_id])
    except ConfigError as error:
        sys.exit(f"shardtune: {error}")
    print(f"cancelled Slurm job {job_id} ({run_dir}); continue it later with: shardtune train ... "
          f"cluster=slurm output_dir={run_dir} resume=auto")
