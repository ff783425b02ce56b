"""The Slurm backend: a readable sbatch script per run, submitted with `sbatch`; `shardtune status` and
`shardtune cancel` through squeue, scontrol and scancel.

sbatch with a generated script rather than submitit: users can read, keep and resubmit the script, and
it needs no Slurm accounting database (submitit only notices a job that died through sacct).

The job, per run directory:

    <output_dir>/slurm/job.sbatch    the script (also what `shardtune plan cluster=slurm` prints)
    <output_dir>/slurm/job_id        the id sbatch returned, for `shardtune status` / `shardtune cancel`
    <output_dir>/slurm/<job id>.out  the job's log; a requeued job appends to it

One srun task per node runs torchrun with the c10d rendezvous on the first node, at that node's address
as Slurm knows it (NodeAddr: node names need not resolve). Slurm sends SIGUSR1 to the tasks
`signal_before_limit_s` before the time limit, and SIGTERM on a preemption; the workers save a checkpoint, write
PREEMPTED and stop; the script then requeues the job, and the requeued job resumes from the checkpoint (resume=auto).
"""
import logging
import os
import shlex
import subprocess
from pathlib import Path

from ..errors import ConfigError
# Rank 0 writes PREEMPTED after the checkpoint it saved on SIGUSR1 or SIGTERM; the batch script requeues when it
# finds it. A file rather than an exit code: torchrun reports any failed worker as exit code 1.
from ..run_dir import PREEMPTED_MARKER
from .rendezvous import ALLOCATOR_ENVIRONMENT, agent_environment, c10d_arguments, socket_environment

log = logging.getLogger("shardtune")
SLURM_DIR = "slurm"
SCRIPT_NAME = "job.sbatch"
JOB_ID_FILE = "job_id"


# Slurm checks time limits every 30 s and may send the warning signal that much early; the workers must be
# running by then (a signal that arrives while they start is lost), so the limit must leave room for both.
SIGNAL_MARGIN_S = 60


def time_limit_seconds(time_limit: str) -> int:
    """Seconds of a Slurm time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS."""
    days, _, clock = time_limit.rpartition("-") if "-" in time_limit else ("0", "", time_limit)
    parts = [int(part) for part in clock.split(":")]
    if "-" in time_limit:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
    else:  # M, M:S or H:M:S
        hours, minutes, seconds = ([0, parts[0], 0] if len(parts) == 1 else [0, *parts] if len(parts) == 2 else parts)
    return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds


def check_time_limit(cluster) -> None:
    if cluster.time is None or cluster.time in ("infinite", "UNLIMITED"):
        return
    try:
        limit_s = time_limit_seconds(str(cluster.time))
    except ValueError as error:
        raise ConfigError("cluster.time", f"expected a Slurm time such as 04:00:00 or 1-12:00:00, got {cluster.time!r}") from error
    if limit_s <= cluster.signal_before_limit_s + SIGNAL_MARGIN_S:
        raise ConfigError("cluster.signal_before_limit_s",
                          f"{cluster.signal_before_limit_s} s before a time limit of {limit_s} s leaves the run too "
                          f"little time: the limit must exceed it by more than {SIGNAL_MARGIN_S} s (Slurm may signal "
                          "30 s early, and a signal that arrives while the workers start is lost)")


def apply_allocation(cfg) -> None:
    """cluster=slurm: the launcher fields follow from the allocation the job asks for."""
    cluster, launcher = cfg.cluster, cfg.launcher
    overridden = {"launcher.nnodes": launcher.nnodes != 1 and launcher.nnodes != cluster.nodes,
                  "launcher.node_rank": launcher.node_rank != 0, "launcher.rdzv_endpoint": bool(launcher.rdzv_endpoint),
                  "launcher.nproc_per_node": cluster.gpus_per_node > 0 and launcher.nproc_per_node not in
                  (None, cluster.gpus_per_node)}
    for key in (key for key, ignored in overridden.items() if ignored):
        log.warning("%s is ignored with cluster=slurm: the allocation (cluster.nodes, cluster.gpus_per_node) and "
                    "Slurm's environment decide it", key)
    launcher.nnodes = cluster.nodes
    launcher.node_rank = 0
    if cluster.gpus_per_node > 0:
        launcher.device = "cuda"
        launcher.nproc_per_node = cluster.gpus_per_node
    elif launcher.device == "auto":
        launcher.device = "cpu"


def shell_join(args) -> str:
    """Like shlex.join, but arguments that hold a $VARIABLE are double-quoted so the shell expands them."""
    return " ".join(f'"{arg}"' if "$" in arg else shlex.quote(arg) for arg in args)


def node_command(cfg, config_path: Path, python: str) -> list:
    """The torchrun command every node's srun task runs; $RDZV_HOST, $RDZV_PORT, $IS_HOST and $SLURM_JOB_ID are set by
    the batch script and Slurm."""
    launcher = cfg.launcher
    rdzv_id = launcher.rdzv_id or "slurm-$SLURM_JOB_ID"
    command = [python, "-m", "torch.distributed.run", f"--nproc-per-node={launcher.nproc_per_node}"]
    command += c10d_arguments(launcher.nnodes, launcher.min_nodes, "$RDZV_HOST:$RDZV_PORT", rdzv_id,
                              "$IS_HOST", launcher.rdzv_timeout_s)
    if launcher.max_restarts:
        command.append(f"--max-restarts={launcher.max_restarts}")
    return command + ["-m", "shardtune.trainer.worker", str(config_path)]


def sbatch_directives(cfg, output_dir: Path) -> list:
    cluster = cfg.cluster
    lines = [f"--job-name={cluster.job_name or output_dir.name}", f"--nodes={cluster.nodes}", "--ntasks-per-node=1",
             f"--output={output_dir / SLURM_DIR / '%j.out'}", "--open-mode=append",  # a requeued job appends
             f"--signal=USR1@{cluster.signal_before_limit_s}"]
    if cluster.requeue:
        lines.append("--requeue")
    if cluster.gpus_per_node:
        lines.append(f"--gpus-per-node={cluster.gpus_per_node}")
    optional = {"cpus-per-task": cluster.cpus_per_task, "partition": cluster.partition, "time": cluster.time,
                "account": cluster.account, "qos": cluster.qos}
    lines += [f"--{name}={value}" for name, value in optional.items() if value is not None]
    return lines + list(cluster.sbatch_options)


def batch_script(cfg, config_path: Path, python: str) -> str:
    """The sbatch script of a run: readable, and resubmittable as it stands."""
    output_dir = config_path.parent
    environment = {**socket_environment(cfg.launcher), **agent_environment(cfg)}
    environment.update({name: f"${{{name}:-{value}}}" for name, value in ALLOCATOR_ENVIRONMENT.items()})
    if cfg.launcher.device == "cpu":  # share each node's cores between its workers
        workers, cpus = cfg.launcher.nproc_per_node, f"${{SLURM_CPUS_ON_NODE:-{cfg.launcher.nproc_per_node}}}"
        environment["OMP_NUM_THREADS"] = f"$(( {cpus} > {workers} ? {cpus} / {workers} : 1 ))"
    marker = shlex.quote(str(output_dir / PREEMPTED_MARKER))
    lines = ["#!/bin/bash",
             f"# shardtune run {output_dir}: written by `shardtune train cluster=slurm`.",
             "# Submit it again as it stands with: sbatch " + shlex.quote(str(output_dir / SLURM_DIR / SCRIPT_NAME)),
             *(f"#SBATCH {line}" for line in sbatch_directives(cfg, output_dir)),
             "",
             "set -u",
             f"cd {shlex.quote(os.getcwd())}",
             *(f"export {name}={value}" for name, value in environment.items()),
             *cfg.cluster.setup,
             "",
             "# The rendezvous host: the first node's address as Slurm knows it (NodeAddr; names need not resolve).",
             'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
             "export RDZV_HOST=$(scontrol show node \"$head_node\" | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')",
             *rendezvous_port_lines(cfg.cluster.rdzv_port, python),
             'echo "shardtune: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, '
             'rendezvous $RDZV_HOST:$RDZV_PORT"',
             "",
             "# One srun task per node runs torchrun. Slurm sends SIGUSR1 to the tasks before the time limit (and",
             "# `scancel --signal=USR1` does the same at once): the workers save a checkpoint and stop; torchrun's",
             "# own agent must ignore it, and the ignored disposition survives exec.",
             "run_node() {",
             "    trap '' USR1",
             '    IS_HOST=false; [ "$SLURM_NODEID" = 0 ] && IS_HOST=true',
             "    exec " + shell_join(node_command(cfg, config_path, python)),
             "}",
             "export -f run_node",
             "# On a preemption (or scancel) Slurm sends SIGTERM to this script and to the tasks, and SIGKILL after",
             "# KillWait or GraceTime: the workers save a checkpoint within train.grace_period_s and stop. Trapped,",
             "# the signal lets this script wait for srun and requeue below, as on SIGUSR1.",
             "trap 'echo \"shardtune: SIGTERM; the workers save a checkpoint and stop\"' TERM",
             "srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c run_node",
             "status=$?",
             "",
             "# The workers leave PREEMPTED after the checkpoint they saved on SIGUSR1 or SIGTERM: requeue, and the",
             "# requeued job resumes from that checkpoint (the run's config says resume=auto).",
             f"if [ -e {marker} ]; then",
             '    echo "shardtune: checkpoint saved on a signal (time limit or preemption); requeueing job $SLURM_JOB_ID"',
             f"    rm -f {marker}",
             '    scontrol requeue "$SLURM_JOB_ID"',
             "    exit 0",
             "fi",
             "exit $status",
             ""]
    return "\n".join(lines)


def rendezvous_port_lines(port: int, python: str) -> list:
    """The script runs on the first node, where the rendezvous is hosted: a free port is picked there."""
    if port:
        return [f"export RDZV_PORT={port}"]
    return ["# A port free on this (the first) node, so that jobs sharing a node never meet in one rendezvous.",
            f"export RDZV_PORT=$({shlex.quote(python)} -c 'import socket; s = socket.socket(); s.bind((\"\", 0)); "
            "print(s.getsockname()[1])')"]


def write_batch_script(cfg, config_path: Path, python: str) -> Path:
    path = config_path.parent / SLURM_DIR / SCRIPT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(batch_script(cfg, config_path, python))
    return path


def run_slurm_command(args: list, key: str = "cluster") -> str:
    """Run a Slurm client command; a missing command or a refusal is a user-facing error naming `key`."""
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as error:
        raise ConfigError(key, f"{args[0]} not found: run this on a Slurm login node") from error
    if result.returncode != 0:
        raise ConfigError(key, f"{shlex.join(args)} failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def submit(script: Path) -> str:
    """sbatch the script; return the job id and remember it in the run directory."""
    job_id = run_slurm_command(["sbatch", "--parsable", str(script)]).strip().split(";")[0]
    (script.parent / JOB_ID_FILE).write_text(job_id + "\n")
    return job_id


def log_path(output_dir: Path, job_id: str) -> Path:
    return Path(output_dir) / SLURM_DIR / f"{job_id}.out"
