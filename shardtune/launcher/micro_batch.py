"""train.micro_batch_size=auto, resolved by the launcher before any worker starts.

Candidates, largest first: powers of two up to GPU_MAX_MICRO_BATCH (CPU_MAX_MICRO_BATCH on CPU workers); with
train.global_batch_size set, the divisors of its share per rank instead, grad_accum making up the share. The first
whose memory estimate (memory.py) fits by fit.py's measure (peak at most the GPU's memory, host RAM within its usable
share) is chosen; when none does, 1, which the launcher's memory check then refuses with the levers that would fit.

The choice is written into the plan's config: the workers, the DeepSpeed JSON and the metrics all see a number. On the
GPU (DDP, FSDP) train.micro_batch_trial is turned on, and the workers confirm the choice by a trial step
(trainer/micro_batch_trial.py). After tokenizing, `fit_to_data` lowers it where the train split is too small.
"""
import logging
from dataclasses import dataclass
from typing import List, Optional

from omegaconf import OmegaConf

from ..config import AUTO
from ..errors import ConfigError
from ..strategy_registry import strategy_spec
from ..trainer.micro_batch_trial import TRIAL_STRATEGY_KINDS
from .fit import CPU_WORKERS, ESTIMATED_SECTIONS, Capacity, Verdict, judge, machine_capacity
from .memory import GIB

log = logging.getLogger("shardtune")

# A cap, so that a small model with short rows does not take the whole GPU for no gain: 128 rows of 256 tokens keep
# a GPU busy already.
GPU_MAX_MICRO_BATCH = 128
# CPU workers have no GPU memory to fill, and a CPU's throughput hardly grows with the micro batch: a few rows keep
# each step short. auto takes the largest power of two up to this that fits host RAM.
CPU_MAX_MICRO_BATCH = 8


@dataclass(frozen=True)
class MicroBatchChoice:
    size: int
    grad_accum: int
    verdict: Verdict  # the estimate at `size`
    largest: int  # the largest candidate
    global_batch_fixed: bool  # train.global_batch_size set: grad_accum was chosen with the size
    trial: bool  # the workers confirm it by a trial step

    def describe(self) -> str:
        """`auto -> 8 (estimated peak 61.2 of 79.6 GiB per GPU)`, as `shardtune plan` prints it and the launcher logs."""
        estimate, capacity = self.verdict.estimate, self.verdict.capacity
        if capacity.gpu_source == CPU_WORKERS:
            host = "" if capacity.host_bytes is None else f" of {capacity.host_bytes / GIB:.1f}"
            why = (f"CPU workers: no GPU memory to fill, the largest up to {CPU_MAX_MICRO_BATCH} within host RAM; "
                   f"estimated {estimate.host.total / GIB:.1f}{host} GiB per node")
        else:
            why = f"estimated peak {estimate.peak_per_gpu / GIB:.1f} of {capacity.gpu_bytes / GIB:.1f} GiB per GPU"
        if not self.verdict.fits:
            why += "; even 1 does not fit"
        elif self.size == self.largest:
            why += f"; {self.largest} is the largest auto tries"
        if self.trial:
            why += "; a trial step on the GPU confirms it"
        elif capacity.gpu_source != CPU_WORKERS:
            why += "; no trial step: DeepSpeed's engine fixes the micro batch when it starts"
        accumulation = f", grad_accum {self.grad_accum} (train.global_batch_size)" if self.global_batch_fixed else ""
        return f"auto -> {self.size}{accumulation} ({why})"


def resolve_micro_batch(cfg, world_size: int, capacity: Optional[Capacity] = None) -> Optional[MicroBatchChoice]:
    """With train.micro_batch_size=auto: choose, write the choice into `cfg` (a planned config: launcher.device is cuda
    or cpu) and return it; None for a number."""
    train = cfg.train
    if train.micro_batch_size != AUTO:
        return None
    capacity = capacity or machine_capacity(cfg)
    on_gpu = capacity.gpu_source != CPU_WORKERS
    if on_gpu and capacity.gpu_bytes is None:
        raise ConfigError("train.micro_batch_size", f"auto fills the GPU's memory, which is not known here "
                                                    f"({capacity.gpu_source}); or give a number")
    share = _share_per_rank(train, world_size)
    largest = GPU_MAX_MICRO_BATCH if on_gpu else CPU_MAX_MICRO_BATCH
    candidates = _candidates(largest, share)
    for size in candidates:
        verdict = judge(_with_size(cfg, size, share), world_size, capacity)
        if verdict.fits:
            break  # else the smallest, 1: check_memory refuses it with the levers
    grad_accum = share // size if share else train.grad_accum
    if share and train.grad_accum not in (1, grad_accum):
        log.warning("train.grad_accum=%d is replaced by %d: with train.global_batch_size and micro_batch_size=auto, "
                    "grad_accum makes up the global batch", train.grad_accum, grad_accum)
    trial = on_gpu and strategy_spec(cfg.strategy).kind in TRIAL_STRATEGY_KINDS
    train.micro_batch_size, train.grad_accum = size, grad_accum
    train.micro_batch_trial = train.micro_batch_trial or trial
    return MicroBatchChoice(size, grad_accum, verdict, candidates[0], share is not None, trial)


def fit_to_data(train, num_train_rows: int, world_size: int) -> None:
    """Lower a micro batch that auto chose where each rank's share of the train split has fewer than
    micro_batch_size * grad_accum rows (with train.global_batch_size set that product is fixed:
    validate_split_sizes judges it)."""
    room = num_train_rows // world_size // train.grad_accum
    if train.global_batch_size is not None or room >= train.micro_batch_size or room < 1:
        return  # room < 1: no micro batch helps; validate_split_sizes says so
    lowered = 1 << (room.bit_length() - 1)  # the largest power of two within room
    log.info("micro batch: auto's %d lowered to %d: the train split has %d rows for each of %d rank(s), grad_accum %d",
             train.micro_batch_size, lowered, num_train_rows // world_size, world_size, train.grad_accum)
    train.micro_batch_size = lowered


def _share_per_rank(train, world_size: int) -> Optional[int]:
    """Rows each rank reads per step when train.global_batch_size fixes them, else None."""
    if train.global_batch_size is None:
        return None
    share, remainder = divmod(train.global_batch_size, world_size)
    if remainder:
        raise ConfigError("train.micro_batch_size", f"auto with train.global_batch_size {train.global_batch_size}: "
                                                    f"it must be a multiple of the world size {world_size}")
    return share


def _candidates(largest: int, share: Optional[int]) -> List[int]:
    """Micro batches to try, largest first: divisors of the share per rank, or powers of two."""
    if share is not None:
        return [size for size in range(min(share, largest), 0, -1) if share % size == 0]
    return [1 << power for power in range(largest.bit_length() - 1, -1, -1)]


def _with_size(cfg, size: int, share: Optional[int]):
    """What the estimate reads of `cfg` (fit.py's sections), at micro batch `size`."""
    changed = OmegaConf.create({key: cfg[key] for key in ESTIMATED_SECTIONS})
    changed.train.micro_batch_size = size
    if share:
        changed.train.grad_accum = share // size
    return changed
