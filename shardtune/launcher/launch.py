"""Launching a run: plan it, tokenize its data, write its config, then start its workers here or submit its Slurm
job. `shardtune train` and each trial of a sweep call these; the workers never come back here."""
import logging
import signal
import sys

from omegaconf import DictConfig

from ..cluster import slurm
from ..cluster.rendezvous import check_rendezvous_reachable
from ..data import load_or_build
from ..data.pipeline import format_report
from ..run_dir import complete_checkpoints
from ..trainer import preemption
from .fit import check_memory
from .micro_batch import fit_to_data
from .model_check import check_model
from .torchrun import LaunchPlan, plan_launch, refuse_existing_run, run_torchrun, write_run_config
from .validation import validate_split_sizes

log = logging.getLogger("shardtune")


def tokenize_data(cfg: DictConfig, rebuild: bool = False):
    """Check the model and its tokenizer, then tokenize the run's data into the cache in this process (or find it
    there), so that a bad model, tokenizer or data fails before any worker starts; (the splits, the tokenizer, the
    cache entry)."""
    tokenizer = check_model(cfg)
    prepared, path, reused = load_or_build(cfg.data, tokenizer, cfg.train.seq_len, cfg.train.seed, rebuild=rebuild)
    log.info("data %s %s: %s", "reused from" if reused else "prepared in", path, format_report(prepared.report))
    return prepared, tokenizer, path


def prepare_run(cfg: DictConfig) -> LaunchPlan:
    """Everything before the workers start: plan, refuse a run that cannot fit its memory, refuse to clobber an
    earlier run, check that node 0 is reachable, tokenize the data (once per cluster, on node 0) and write the
    run's config."""
    plan = plan_launch(cfg)
    cfg = plan.config
    if plan.micro_batch is not None:
        log.info("micro batch: %s", plan.micro_batch.describe())
    check_memory(cfg, plan.world_size)  # a run that cannot fit stops here, before the data work and any worker
    refuse_existing_run(cfg, plan.output_dir)  # before the data work, which may take a while
    if cfg.cluster.name == "local":
        check_rendezvous_reachable(cfg.launcher, log)  # other nodes: fail clearly rather than hang in torchrun
    cache_entry = None
    if cfg.launcher.node_rank == 0:
        prepared, _, cache_entry = tokenize_data(cfg)  # the workers of every node load this cache entry
        if plan.micro_batch is not None:
            fit_to_data(cfg.train, len(prepared.train), plan.world_size)
        validate_split_sizes(cfg.train, len(prepared.train), plan.world_size)
    else:
        log.info("node %d: node 0's launcher prepares the data; the workers load it from the cache (or build "
                 "it where this node does not share node 0's cache directory)", cfg.launcher.node_rank)
    write_run_config(plan, cache_entry)
    return plan


def launch(cfg: DictConfig) -> None:
    """`shardtune train`: one run, on this machine or as a Slurm job."""
    plan = prepare_run(cfg)
    if plan.config.cluster.name == "slurm":
        submit_to_slurm(plan)
    else:
        run_locally(plan)


def run_locally(plan: LaunchPlan) -> None:
    log.info("run directory %s; %d workers (%s): %s", plan.output_dir, plan.world_size, plan.device_type,
             plan.command_line())
    if plan.config.launcher.node_rank == 0:
        preemption.clear_marker(plan.output_dir)  # an earlier stop's: this run's own is what counts below
    returncode = run_torchrun(plan)
    stopped = preemption.read_marker(plan.output_dir)  # (checkpoint, signal) of a run stopped on a signal
    if returncode == 128 + signal.SIGTERM or (stopped and stopped[1] == "SIGTERM"):
        # Non-zero, as a process stopped by SIGTERM exits, so that a scheduler does not take the run as done.
        if stopped:
            print(f"shardtune: stopped by SIGTERM after step {stopped[0].name.removeprefix('step-')}, checkpoint "
                  f"{stopped[0]}; continue with resume=auto", file=sys.stderr, flush=True)
        else:
            print(f"shardtune: stopped by SIGTERM; no checkpoint was written within train.grace_period_s="
                  f"{plan.config.train.grace_period_s:g} s (resume=auto continues from the newest complete one, "
                  "if any)", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGTERM)
    if returncode == 128 + signal.SIGINT:
        newest = complete_checkpoints(plan.output_dir)
        print("shardtune: interrupted (Ctrl-C): stopped at once, without a checkpoint; "
              + (f"the newest complete one is {newest[-1]}; continue with resume=auto" if newest
                 else "no checkpoint to continue from"), file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
    if returncode:
        sys.exit(f"shardtune: workers failed (exit code {returncode}); see the log above and {plan.output_dir}")
    if stopped:
        log.info("stopped on SIGUSR1 after saving a checkpoint; continue with: shardtune train ... "
                 "output_dir=%s resume=auto", plan.output_dir)


def submit_to_slurm(plan: LaunchPlan) -> str:
    cfg = plan.config
    script = slurm.write_batch_script(cfg, plan.config_path, sys.executable)
    job_id = slurm.submit(script)
    print(f"submitted Slurm job {job_id}: {cfg.cluster.nodes} node(s) x {plan.nproc_per_node} worker(s)\n"
          f"  script  {script}\n  log     {slurm.log_path(plan.output_dir, job_id)}\n"
          f"  status  shardtune status {plan.output_dir}\n  cancel  shardtune cancel {plan.output_dir}", flush=True)
    return job_id
