"""Resolve what a run needs on this machine (`plan_launch`), write the run's config, and start torchrun."""
import copy
import importlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import psutil
import torch
from omegaconf import OmegaConf

from ..cluster import slurm
from ..cluster.environment import apply_slurm_step, slurm_step
from ..cluster.rendezvous import (ALLOCATOR_ENVIRONMENT, STATIC_DEFAULT_PORT, agent_environment,
                                  apply_allocator_environment, c10d_arguments, hosts_rendezvous, rendezvous_id,
                                  socket_environment)
from ..cluster.slurm import shell_join
from ..data.cache import cache_root
from ..errors import ConfigError
from ..run_dir import CONFIG_FILE, holds_run, write_text_atomic
from .micro_batch import MicroBatchChoice, resolve_micro_batch
from .validation import validate


@dataclass
class LaunchPlan:
    config: Any  # the run's config as this machine runs it: device, workers and precision filled in
    device_type: str  # cuda or cpu
    nproc_per_node: int
    world_size: int
    config_path: Path
    command: list
    micro_batch: Optional[MicroBatchChoice] = None  # what train.micro_batch_size=auto chose; None for a number

    @property
    def output_dir(self) -> Path:
        return self.config_path.parent

    def command_line(self) -> str:
        return shell_join(self.command)


def detect_device(setting: str, check_devices: bool = True) -> str:
    if check_devices and setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("launcher.device", "cuda was asked for but no GPU is visible")
    if setting not in ("auto", "cuda", "cpu"):
        raise ConfigError("launcher.device", f"expected auto, cuda or cpu, got {setting!r}")
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def plan_launch(cfg, check_devices: bool = True) -> LaunchPlan:
    """Validate `cfg` and plan it on this machine: the plan's config is a copy of `cfg` with the machine-dependent
    fields (device, workers, precision, a micro batch for train.micro_batch_size=auto) filled in. No side effects: `cfg` and the disk stay as they were.

    check_devices=False plans for GPUs this machine does not have (a login node): give
    launcher.device=cuda and launcher.nproc_per_node. cluster=slurm plans for the allocation it asks for
    (cluster.nodes, cluster.gpus_per_node) and its command is what each node's srun task runs.
    """
    cfg = copy.deepcopy(cfg)
    on_slurm = cfg.cluster.name == "slurm"
    if on_slurm:
        slurm.apply_allocation(cfg)
        check_devices = False
    else:  # in `srun --ntasks-per-node=1 shardtune train ...`, Slurm's environment names the nodes
        apply_slurm_step(cfg.launcher, cfg.launcher.master_port or STATIC_DEFAULT_PORT, slurm_step())
    device_type = detect_device(cfg.launcher.device, check_devices)
    nproc = cfg.launcher.nproc_per_node
    if nproc is None:
        nproc = torch.cuda.device_count() if device_type == "cuda" else cfg.launcher.cpu_workers
    if nproc < 1:
        # Name the key that produced the count: cpu_workers stands in for nproc_per_node on CPU.
        from_cpu_workers = cfg.launcher.nproc_per_node is None and device_type == "cpu"
        key = "launcher.cpu_workers" if from_cpu_workers else "launcher.nproc_per_node"
        raise ConfigError(key, f"must be >= 1, got {nproc}")
    if check_devices and device_type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError("launcher.nproc_per_node", f"{nproc} workers but only {torch.cuda.device_count()} GPUs visible")
    world_size = nproc * cfg.launcher.nnodes
    validate(cfg, device_type, world_size)
    cfg.launcher.device = device_type
    cfg.launcher.nproc_per_node = nproc
    if cfg.train.precision == "auto":
        cfg.train.precision = "bf16" if device_type == "cuda" else "fp32"
    micro_batch = resolve_micro_batch(cfg, world_size)  # needs the fields above; the workers get its number
    config_path = Path(cfg.output_dir).absolute() / CONFIG_FILE
    command = slurm.node_command(cfg, config_path, sys.executable) if on_slurm else torchrun_command(cfg, config_path)
    return LaunchPlan(cfg, device_type, nproc, world_size, config_path, command, micro_batch)


def torchrun_command(cfg, config_path: Path) -> list:
    launcher = cfg.launcher
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launcher.nproc_per_node}"]
    if launcher.rdzv_endpoint:
        is_host = "true" if hosts_rendezvous(launcher) else "false"
        command += c10d_arguments(launcher.nnodes, launcher.min_nodes, launcher.rdzv_endpoint,
                                  rendezvous_id(launcher, cfg.output_dir), is_host, launcher.rdzv_timeout_s)
    elif launcher.nnodes == 1 and launcher.master_port == 0:
        command.append("--standalone")  # rendezvous on a free local port
    else:
        command += [f"--nnodes={launcher.nnodes}", f"--node-rank={launcher.node_rank}",
                    f"--master-addr={launcher.master_addr}", f"--master-port={launcher.master_port or STATIC_DEFAULT_PORT}"]
    if launcher.max_restarts:
        command.append(f"--max-restarts={launcher.max_restarts}")
    if launcher.local_addr:
        command.append(f"--local-addr={launcher.local_addr}")
    return command + ["-m", "shardtune.trainer.worker", str(config_path)]


def refuse_existing_run(cfg, output_dir: Path) -> None:
    """A fresh start (resume=none) must not clobber an earlier run's outputs."""
    if cfg.resume == "none" and holds_run(output_dir):
        raise ConfigError("output_dir", f"{output_dir} already holds a run; pass resume=auto to continue it, "
                                        "or choose another output_dir")


def write_run_config(plan: LaunchPlan, cache_entry: Optional[Path] = None) -> None:
    """Write the plan's config, which the workers read; refuse to start over an earlier run's outputs.

    The data cache directory is written out resolved, and `cache_entry` (the entry the launcher tokenized), so
    every worker on every node loads that entry without computing its key again. Another node of a multi-node run
    writes the file only where it is missing (a run directory that is not shared); on a shared one node 0's copy
    serves all.
    """
    cfg = plan.config
    refuse_existing_run(cfg, plan.output_dir)
    if cfg.launcher.node_rank > 0 and plan.config_path.exists():
        return
    cfg.data.cache_dir = str(cache_root(cfg.data).absolute())
    cfg.data.cache_entry = str(cache_entry) if cache_entry is not None else None
    if cfg.cluster.name == "slurm" and cfg.resume == "none":
        cfg.resume = "auto"  # a requeued job continues from its checkpoint; the first finds none and starts
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan.config_path, OmegaConf.to_yaml(cfg, resolve=True))


def worker_environment(plan: LaunchPlan) -> dict:
    env = dict(os.environ)
    if plan.device_type == "cpu":
        # Share the cores between the workers instead of each one spawning a thread per core.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // plan.nproc_per_node)))
    for name, value in ALLOCATOR_ENVIRONMENT.items():
        env.setdefault(name, value)
    env.update(socket_environment(plan.config.launcher))
    for name, value in agent_environment(plan.config).items():
        env.setdefault(name, value)
    return env


def run_torchrun(plan: LaunchPlan, environment: Optional[dict] = None) -> int:
    """Run the plan's torchrun command, with `environment` added to the workers'; its exit status, 128 + the signal
    when SIGTERM or SIGINT stopped it. On CPU, torchrun's agent runs in this process and forks the workers from it
    (see run_forked_workers)."""
    if plan.device_type == "cpu":
        return run_forked_workers(plan, environment or {})
    torchrun = subprocess.Popen(plan.command, env={**worker_environment(plan), **(environment or {})})
    received = []

    def forward(signum, frame):  # torchrun's agent passes it on to the workers and waits for them
        received.append(signum)
        torchrun.send_signal(signum)
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGTERM, forward) if main_thread else None
    try:
        returncode = torchrun.wait()
    except KeyboardInterrupt:  # Ctrl-C reached torchrun too, which stops its workers: wait for it to finish that
        returncode = torchrun.wait()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 128 + received[0] if received else returncode


def run_forked_workers(plan: LaunchPlan, environment: dict) -> int:
    """The plan's torchrun command with its elastic agent in this process, starting each worker as a fork of this
    process instead of a new interpreter: the libraries this launcher imported (torch, transformers, the trainer)
    are not imported again by every worker and after every restart, which is most of a short CPU run's time.
    torchrun's own parser reads the command, so the rendezvous, restarts and failure reports are torchrun's.

    CPU only: a process that has used CUDA cannot be forked, and this launcher asks CUDA how many GPUs there are.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    importlib.import_module("shardtune.trainer.worker")  # imported once here, inherited by every fork
    # The tokenizers' thread pool that data preparation used would not survive a fork: turned off, quietly.
    environment = {**worker_environment(plan), "TOKENIZERS_PARALLELISM": "false", **environment}
    saved = dict(os.environ)
    os.environ.update(environment)  # the workers' environment, before torchrun's parser reads OMP_NUM_THREADS
    sys.stdout.flush()  # or each fork would print what this process had not written yet
    sys.stderr.flush()
    # SIGTERM is passed on here rather than by the agent: the agent would send it on too, but a forked worker that
    # then ends well (checkpoint saved) waits for the agent's word to exit, which its shutdown never gives, and is
    # killed after the shutdown timeout. Passed on here, the agent watches the workers finish as in any run.
    terminated = []
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signal_workers(signum))) \
        if main_thread else None
    try:
        args = get_args_parser().parse_args(plan.command[3:])  # after `python -m torch.distributed.run`
        if args.standalone:  # as torchrun's run() does for --standalone
            args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
        config, _, worker_args = config_from_args(args)
        config.start_method = "fork"
        config.signals_to_handle = "SIGINT,SIGHUP,SIGQUIT"  # not SIGTERM: see above
        elastic_launch(config, forked_worker)(worker_args[-1])
    except ChildFailedError as error:
        print(error.format_msg(), file=sys.stderr, flush=True)  # torchrun's report of the failed workers
        print(f"shardtune: {describe_failures(error.failures)}", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM if terminated else 1
    except SignalException as error:  # the agent got SIGINT (Ctrl-C) or SIGHUP, sent it on and stopped the workers
        return 128 + error.sigval
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 128 + signal.SIGTERM if terminated else 0


def signal_workers(signum: int) -> int:
    """Send `signum` to this launcher's forked workers (named by their rank); the signal."""
    for child in psutil.Process().children():
        try:
            if child.name().startswith("shardtune-r"):
                child.send_signal(signum)
        except psutil.NoSuchProcess:
            pass
    return signum


def describe_failures(failures: dict) -> str:
    """One line for torchrun's failed workers ({global rank: ProcessFailure}), naming a signal where one ended a
    worker: torchrun's report shows an exit code such as -9 among its fields."""
    said = []
    for rank, failure in sorted(failures.items()):
        if failure.exitcode < 0:
            said.append(f"rank {rank} was killed by {failure.signal_name()}")
        else:
            said.append(f"rank {rank} exited with code {failure.exitcode}")
    return "; ".join(said)


def forked_worker(config_path: str) -> None:
    """A worker in a fork of the launcher: first what a new interpreter would have read from its environment, then
    the worker; an exception is printed as it would be by a process of its own, with its rank."""
    from ..trainer import worker
    rank = os.environ["RANK"]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the launcher's handler, which passes SIGTERM on, is not ours
    # Ctrl-C reaches the workers too (one process group): a KeyboardInterrupt, not the agent's handler it was forked
    # with, which would print a SignalException's traceback from every rank.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # `ps` and `top` show the rank instead of a copy of the launcher's command line.
    _set_process_name(f"shardtune-r{rank}")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # torch read it when the launcher imported torch
    apply_allocator_environment()
    try:
        worker.run(config_path)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)  # the launcher says what was interrupted
    except Exception:
        sys.excepthook(*sys.exc_info())  # after init_process_group: torch's, which prefixes "[rank1]: "
        raise


def _set_process_name(name: str) -> None:
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except OSError:
        pass
