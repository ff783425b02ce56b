"""One trial of a sweep: what `shardtune train -m ...` runs for each set of overrides Hydra's sweeper makes.

A trial is a whole run in <sweep_dir>/trial-N: its own torchrun world (or Slurm job), metrics.jsonl, W&B run
(grouped under the sweep's name) and final/. Whatever goes wrong inside it (a config the hyperparameters make
invalid, a diverging loss, an out-of-memory error, a worker that dies) is recorded in trial.json as failed, and the
sweeper gets the worst value, so the sweep goes on. A trial that finished in an earlier run of the same sweep is
skipped; one that was interrupted continues from its last checkpoint.
"""
import logging
import os
import re
import subprocess
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from ..cluster import slurm
from ..cluster.commands import wait_for_job
from ..errors import ConfigError, DataError
from ..launcher.launch import prepare_run, submit_to_slurm
from ..launcher.torchrun import run_torchrun
from ..run_dir import EVAL_FILE, PRUNED_MARKER, SUMMARY_FILE
from .objective import EVAL_PREFIX, check_sweep_settings, direction_of, objective_value, worst_value
from .parallel import device_slot
from .naming import identity
from .pruning import study_location
from .records import TrialRecord, load_record, params_of

log = logging.getLogger("shardtune")
TRAIN_LOG = "train.log"  # the workers' output of a local trial
ERROR_LINES = 200  # output kept to find the error of a failed trial
# The last line of a Python traceback ("ValueError: ...", "torch.OutOfMemoryError: ..."), which torch prefixes
# with "[rank1]: " in workers; torchrun's own ChildFailedError only says that a worker failed.
EXCEPTION_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt)\b.*)")


def run_trial(cfg) -> float:
    """Hydra's task in multirun mode; returns the objective the sweeper records."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir).absolute()
    sweep_dir = Path(hydra_cfg.sweep.dir).absolute()
    number = int(hydra_cfg.job.num)
    overrides = list(hydra_cfg.overrides.task)
    objective = cfg.sweep.objective
    earlier = load_record(run_dir)
    if earlier is not None:
        if identity(earlier.overrides) != identity(overrides):
            raise ConfigError("hydra.sweep.dir", f"{run_dir} holds trial {earlier.number} of another sweep "
                                                 f"({' '.join(earlier.overrides)}); use another hydra.sweep.dir")
        if earlier.finished and not (earlier.status == "failed" and cfg.sweep.retry_failed):
            if earlier.objective != objective:  # sweep.objective changed: measure the finished run anew
                remeasure(earlier, objective, run_dir)
            log.info("trial %d %s in an earlier run of this sweep (objective %s): skipped", number, earlier.status,
                     earlier.value)
            return value_for_sweeper(earlier)
    record = TrialRecord(number, overrides, objective, run_dir=str(run_dir), params=params_of(overrides),
                         started_at=time.time())
    record.save(run_dir)
    log.info("trial %d: %s", number, " ".join(overrides) or "(no overrides)")
    try:
        configure_trial(cfg, hydra_cfg, run_dir, sweep_dir, number)
        with device_slot(sweep_dir, cfg, log) as environment:
            train_and_measure(cfg, record, environment)
    except (ConfigError, DataError) as error:
        record.status, record.error = "failed", str(error)
    except Exception as error:  # the sweep goes on; the record and the log say what happened
        log.exception("trial %d failed", number)
        record.status, record.error = "failed", f"{type(error).__name__}: {error}"
    record.ended_at = time.time()
    record.wall_time_s = record.ended_at - record.started_at
    record.save(run_dir)
    if record.status == "failed":
        log.error("trial %d failed: %s", number, record.error)
    else:
        log.info("trial %d %s: %s = %s", number, record.status, objective, record.value)
    return value_for_sweeper(record)


def remeasure(record: TrialRecord, objective: str, run_dir: Path) -> None:
    direction_of(objective)
    record.objective, record.value = objective, None
    if record.status == "completed":
        if objective.startswith(EVAL_PREFIX) and not (run_dir / EVAL_FILE).exists():
            run_eval(run_dir, {})
        record.value = objective_value(run_dir, objective)
    record.save(run_dir)


def value_for_sweeper(record: TrialRecord) -> float:
    """The objective; a failed trial (or one that never measured it) ranks below every other."""
    if record.status == "failed" or record.value is None:
        return worst_value(record.objective)
    return record.value


def configure_trial(cfg, hydra_cfg, run_dir: Path, sweep_dir: Path, number: int) -> None:
    """Point the run at the trial's directory and name it after the sweep."""
    check_sweep_settings(cfg, hydra_cfg.sweeper.get("_target_", ""))
    cfg.output_dir = str(run_dir)
    cfg.resume = "auto"  # an interrupted trial continues from its last checkpoint; a new one starts
    cfg.logger.group = cfg.logger.group or sweep_dir.name
    cfg.logger.run_name = cfg.logger.run_name or f"{sweep_dir.name}/trial-{number}"
    if cfg.cluster.name == "slurm":
        cfg.cluster.job_name = cfg.cluster.job_name or f"{sweep_dir.name}-trial-{number}"
    if cfg.sweep.pruner != "none":
        cfg.sweep.optuna_storage, cfg.sweep.optuna_study = study_location(hydra_cfg.sweeper, sweep_dir)
        cfg.sweep.optuna_trial = number  # the sweeper numbers its jobs as its study numbers the trials


def train_and_measure(cfg, record: TrialRecord, environment: dict) -> None:
    run_dir = Path(record.run_dir)
    plan = prepare_run(cfg)
    (run_dir / PRUNED_MARKER).unlink(missing_ok=True)
    if cfg.cluster.name == "slurm":
        failure, output = run_slurm_job(plan, record)
    else:
        failure, output = run_workers(plan, environment, run_dir, record.number)
    measured = record.measure(run_dir)
    if (run_dir / PRUNED_MARKER).exists():
        record.status, record.value = "pruned", record.val_loss
        return
    if failure or not (run_dir / SUMMARY_FILE).exists():
        record.status, record.error = "failed", error_summary(output) or failure or f"the run wrote no {SUMMARY_FILE}"
        return
    if record.objective.startswith(EVAL_PREFIX):
        run_eval(run_dir, environment)
    record.status, record.value = "completed", objective_value(run_dir, record.objective, measured)
    if record.value is None:
        record.status, record.error = "failed", f"the run did not measure {record.objective}"


def run_workers(plan, environment: dict, run_dir: Path, number: int) -> tuple:
    """torchrun with its output in <run_dir>/train.log and on the console (each line marked with the trial);
    (what went wrong or "", the last lines)."""
    train_log = run_dir / TRAIN_LOG
    start = train_log.stat().st_size if train_log.exists() else 0  # a retried trial appends to its log
    with output_copied_to(train_log, f"[trial {number}] "):
        returncode = run_torchrun(plan, {**environment, "TQDM_DISABLE": "1"})  # log lines, not a bar
    with open(train_log, errors="replace") as log_file:
        log_file.seek(start)
        tail = [line.rstrip("\n") for line in deque(log_file, maxlen=ERROR_LINES)]
    return (f"the workers exited with code {returncode}" if returncode else ""), tail


@contextmanager
def output_copied_to(log_path: Path, console_prefix: str):
    """Everything this process and the processes it starts write to stdout and stderr, while inside: appended to
    `log_path` and, each line marked with `console_prefix`, to the console. The workers write to file descriptors 1
    and 2 whether they are forks of this process or new programs, so those two become a pipe, read by a forked
    reader process (not a thread: the workers are forked from this process while it runs)."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    reader = os.fork()
    if reader == 0:
        os.close(write_end)
        try:
            with os.fdopen(read_end, errors="replace") as lines, open(log_path, "a") as log_file:
                for line in lines:
                    log_file.write(line)
                    log_file.flush()
                    os.write(1, (console_prefix + line).encode(errors="replace"))
        finally:
            os._exit(0)
    os.close(read_end)
    console = os.dup(1), os.dup(2)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(console[0], 1)  # the last write end closes: the reader reads to the end and exits
        os.dup2(console[1], 2)
        os.close(console[0])
        os.close(console[1])
        os.waitpid(reader, 0)


def run_slurm_job(plan, record: TrialRecord) -> tuple:
    """Submit the trial's job and wait until it has ended (a requeued job stays in the queue);
    (what went wrong or "", the last lines of its log)."""
    job_id = submit_to_slurm(plan)
    record.slurm_job_id = job_id
    record.save(record.run_dir)
    state = wait_for_job(job_id, plan.config.sweep.poll_interval_s)
    log_file = slurm.log_path(Path(record.run_dir), job_id)
    lines = log_file.read_text(errors="replace").splitlines()[-ERROR_LINES:] if log_file.exists() else []
    log.info("trial %d: Slurm job %s ended (%s)", record.number, job_id, state or "no longer listed")
    # Slurm forgets a finished job after MinJobAge; the run directory then tells how it went.
    return ("" if state in ("COMPLETED", "") else f"Slurm job {job_id} ended {state}"), lines


def run_eval(run_dir: Path, environment: dict) -> None:
    """`shardtune eval` on the validation split: hyperparameters are chosen on validation, never on test."""
    result = subprocess.run([sys.executable, "-m", "shardtune.cli", "eval", str(run_dir), "--split", "validation"],
                            env={**os.environ, **environment}, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).splitlines()
        raise RuntimeError(f"shardtune eval failed: {error_summary(lines) or lines[-1:]}")


def error_summary(lines) -> str:
    """The last exception line a worker printed, e.g. "FloatingPointError: loss is nan at step 3"."""
    for line in reversed(lines):
        match = EXCEPTION_LINE.match(line.strip())
        if match and "ChildFailedError" not in line:
            return match.group(1)
    return ""
