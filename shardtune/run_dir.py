"""The run directory contract: what a run's files are called, who writes them, and how they are written and read.

    config.yaml           the resolved config (the launcher; workers and later commands read it)
    launcher.log          Hydra's log of the launcher (launcher-node<R>.log on the other nodes)
    metrics.jsonl         one JSON record per logged step and evaluation (rank 0, a line at a time)
    summary.json          the finished run's summary rows (rank 0, at the end)
    checkpoints/step-N/   resumable checkpoints; complete once COMPLETE is in them
    final/                the trained adapter or model (train.save_final)
    random-init/          the seeded base of a model.init=random run; complete once COMPLETE is in it
    PREEMPTED             a checkpoint was saved on SIGUSR1 and the run stopped (Slurm requeues on it)
    PRUNED                a sweep's pruner stopped the run
    wandb_run_id, wandb/  the W&B run (continued on resume)
    eval.json             `shardtune eval` results (eval-step-N.json for a checkpoint)
    export/               `shardtune export` output (export-step-N/ for a checkpoint)
    slurm/                the sbatch script, job id and job logs (cluster=slurm)
    train.log, trial.json a sweep's trial: the workers' output and what became of the trial

Files that others read while a run goes on are replaced whole (written beside, then renamed), and directories
are staged and renamed into place with a COMPLETE marker, so a reader never sees half of one. A leaf module.
"""
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, List, Optional

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
RANDOM_INIT_DIR = "random-init"
COMPLETE_MARKER = "COMPLETE"
PREEMPTED_MARKER = "PREEMPTED"
PRUNED_MARKER = "PRUNED"
WANDB_RUN_ID_FILE = "wandb_run_id"
EVAL_FILE = "eval.json"
STEP_DIR = re.compile(r"^step-(\d+)$")
# Outputs that mean a directory already holds a run, which a fresh start (resume=none) would clobber.
RUN_OUTPUTS = (METRICS_FILE, CHECKPOINTS_DIR, FINAL_DIR)


def holds_run(run_dir) -> bool:
    return any((Path(run_dir) / name).exists() for name in RUN_OUTPUTS)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_root(run_dir) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_dir(run_dir, step: int) -> Path:
    return checkpoint_root(run_dir) / f"step-{step}"


def is_complete(path) -> bool:
    return (Path(path) / COMPLETE_MARKER).exists()


def complete_checkpoints(run_dir) -> List[Path]:
    """Complete checkpoint directories, oldest first."""
    root = checkpoint_root(run_dir)
    found = []
    for path in root.iterdir() if root.is_dir() else ():
        match = STEP_DIR.match(path.name)
        if match and is_complete(path):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


# --------------------------------------------------------------------------- writing


def write_text_atomic(path, text: str) -> None:
    """Replace `path` whole: readers see the old content or the new, never half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


def write_directory_atomically(path, fill: Callable[[Path], None], is_complete: Callable[[], bool]) -> None:
    """fill(staging) writes the directory's contents into a staging directory beside `path`, which is then
    renamed to `path`. Debris of a writer that crashed is replaced; another writer's complete copy is kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(staging)
        if path.exists() and not is_complete():
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.rename(staging, path)
        except OSError:  # another writer finished first
            if not is_complete():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def read_metrics(run_dir) -> List[dict]:
    """The records of metrics.jsonl in order; [] before the first one."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a torn last line of a run that died mid-write
    return records


def last_logged_step(run_dir) -> Optional[int]:
    records = read_metrics(run_dir)
    return records[-1]["step"] if records else None


def read_summary(run_dir) -> dict:
    """summary.json of a finished run; {} for one that has not finished."""
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else {}
