"""How many trials of a sweep run at once, and which devices each one takes.

Local trials share the node: trial slot k of P uses GPUs k*n .. k*n+n-1 (n = launcher.nproc_per_node), held through
a file lock in <sweep_dir>/.slots for as long as the trial runs, so a trial never lands on a GPU another trial
holds, whichever order the launcher starts them in. On Slurm every trial is its own job: all of them at once.
"""
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError

MAX_SLURM_TRIALS = 64  # jobs a sweep keeps queued at once unless sweep.parallel_trials says otherwise
SLOTS_DIR = ".slots"


def uses_cuda(cfg) -> bool:
    # Imported here: Hydra imports this module (through the launcher plugin) at every start.
    from ..launcher.torchrun import detect_device
    return detect_device(cfg.launcher.device, check_devices=False) == "cuda"


def parallel_trials(cfg, num_trials: int = 1 << 30) -> int:
    setting = cfg.sweep.parallel_trials
    if setting is not None and setting < 1:
        raise ConfigError("sweep.parallel_trials", f"must be >= 1 (or null for automatic), got {setting}")
    if cfg.cluster.name == "slurm":
        return max(1, min(num_trials, setting or MAX_SLURM_TRIALS))
    if uses_cuda(cfg):
        import torch
        devices = torch.cuda.device_count()
        per_trial = cfg.launcher.nproc_per_node or devices
        fitting = max(1, devices // max(1, per_trial))
        if setting is not None and setting > fitting:
            raise ConfigError("sweep.parallel_trials", f"{setting} trials of {per_trial} GPU(s) each do not fit on "
                                                       f"the {devices} GPU(s) of this node (at most {fitting})")
        return max(1, min(num_trials, setting or fitting))
    # CPU trials share the cores: running several at once only slows each down, unless asked for.
    return max(1, min(num_trials, setting or 1))


def slot_environment(slot: int, num_slots: int, cfg) -> dict:
    """Environment for the workers of the trial in `slot`."""
    if uses_cuda(cfg):
        import torch
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        per_trial = cfg.launcher.nproc_per_node or len(devices)
        return {"CUDA_VISIBLE_DEVICES": ",".join(devices[slot * per_trial:(slot + 1) * per_trial])}
    workers = cfg.launcher.nproc_per_node or cfg.launcher.cpu_workers
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // (num_slots * workers)))}


@contextmanager
def device_slot(sweep_dir: Path, cfg, log):
    """Hold a free slot while the trial runs; yields the environment its workers need ({} when trials run one
    at a time)."""
    num_slots = parallel_trials(cfg)
    if num_slots == 1 or cfg.cluster.name == "slurm":
        yield {}
        return
    lock_dir = Path(sweep_dir) / SLOTS_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for slot in range(num_slots):
            handle = open(lock_dir / f"slot-{slot}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                environment = slot_environment(slot, num_slots, cfg)
                log.info("device slot %d of %d: %s", slot, num_slots, environment)
                yield environment
            finally:
                handle.close()  # closing releases the lock
            return
        time.sleep(1.0)
