"""Does a run fit its machines? The memory estimate (memory.py) held against the GPU's memory and the node's RAM.

`check_memory` is the launcher's check: before any worker starts, `shardtune train` refuses a run whose estimated
peak per GPU exceeds the GPU's memory by more than REFUSAL_MARGIN, or whose host RAM per node exceeds the node's,
with a ConfigError naming the numbers and what would fit instead (launcher.memory_check=false turns the refusal into
a warning). `fit_report` is `shardtune plan`'s verdict. Every alternative is estimated again, not guessed.
"""
import bisect
import functools
import itertools
import logging
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import psutil
import torch
from omegaconf import OmegaConf

from ..config import QLoraMethodConfig
from ..errors import ConfigError
from ..strategy_registry import FSDPStrategyConfig, strategy_spec
from .memory import GIB, MemoryEstimate, estimate_memory

log = logging.getLogger("shardtune")

# The estimate aims at within 15% of measured peaks, so only a run estimated clearly past the GPU's memory is
# refused; between 100% and this, `train` warns and starts it.
REFUSAL_MARGIN = 1.10
# The share of a node's RAM a run may plan to use: the kernel, page cache and pinned staging buffers need the rest.
# Measured: an 8B full fine-tune with FSDP2 CPU offload, estimated at 122.7 GiB on a 125 GiB H200 node, was killed
# by the OOM killer in its first step (2026-12-02).
HOST_USABLE_FRACTION = 0.9
# "More GPUs" grows one node up to this many GPUs, then adds nodes of this many (the usual GPU server).
GPUS_PER_NODE = 8
MAX_WORLD_SIZE = 1024  # the largest world "more GPUs" suggests


# --------------------------------------------------------------------------- what the machines have


@dataclass(frozen=True)
class Capacity:
    """Memory of each GPU and of each node's host, with where each number comes from (None: not known here)."""
    gpu_bytes: Optional[int]
    gpu_source: str
    host_bytes: Optional[int]
    host_source: str


def machine_capacity(cfg) -> Capacity:
    """What the run's machines have, for a planned config (launcher.device is cuda or cpu)."""
    gpu_bytes, gpu_source = gpu_memory(cfg)
    host_bytes, host_source = host_memory(cfg)
    return Capacity(gpu_bytes, gpu_source, host_bytes, host_source)


CPU_WORKERS = "CPU workers: no GPU"  # where a GPU is not known because the run has none


def gpu_memory(cfg) -> Tuple[Optional[int], str]:
    if cfg.launcher.device == "cpu":
        return None, CPU_WORKERS
    if cfg.launcher.gpu_memory_gib is not None:
        return int(cfg.launcher.gpu_memory_gib * GIB), "launcher.gpu_memory_gib"
    if cfg.cluster.name == "slurm":
        return None, "the Slurm allocation's GPUs are not this machine's; set launcher.gpu_memory_gib to check them"
    if not torch.cuda.is_available():
        return None, "no GPU on this machine; set launcher.gpu_memory_gib to check"
    # The driver's device properties, read without creating a CUDA context (measured on an H200: 1 ms, no process
    # on the GPU afterwards). torch then refuses CUDA in processes forked from this one; none needs it (the workers
    # start fresh from torchrun, the tokenizing processes use no GPU).
    properties = torch.cuda.get_device_properties(0)
    return properties.total_memory, f"GPU 0 of this machine, {properties.name}"


def host_memory(cfg) -> Tuple[Optional[int], str]:
    if cfg.launcher.host_memory_gib is not None:
        return int(cfg.launcher.host_memory_gib * GIB), "launcher.host_memory_gib"
    if cfg.cluster.name == "slurm":
        return None, "the Slurm nodes are not this machine; set launcher.host_memory_gib to check them"
    if cfg.launcher.device == "cuda" and not torch.cuda.is_available():  # `plan` for GPUs elsewhere
        return None, "the run's GPUs are not on this machine, nor its nodes; set launcher.host_memory_gib to check them"
    return psutil.virtual_memory().total, "this machine's RAM"


# --------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Verdict:
    estimate: MemoryEstimate
    capacity: Capacity
    world_size: int

    @property
    def gpu_ratio(self) -> Optional[float]:
        """Peak per GPU over the GPU's memory; None where the GPU is not known (or there is none)."""
        if self.capacity.gpu_bytes is None:
            return None
        return self.estimate.peak_per_gpu / self.capacity.gpu_bytes

    @property
    def host_fits(self) -> bool:
        return (self.capacity.host_bytes is None
                or self.estimate.host.total <= self.capacity.host_bytes * HOST_USABLE_FRACTION)

    @property
    def fits(self) -> bool:
        """Fits what is known: the GPU's memory, the node's RAM."""
        return (self.gpu_ratio is None or self.gpu_ratio <= 1) and self.host_fits

    @property
    def refused(self) -> bool:
        """Clearly too big: past the GPU's memory by more than the margin, or past the node's RAM."""
        return (self.gpu_ratio is not None and self.gpu_ratio > REFUSAL_MARGIN) or not self.host_fits

    def word(self) -> str:
        if self.refused:
            return "no"
        if not self.fits:
            return "maybe"
        gpu_unknown = self.gpu_ratio is None and self.capacity.gpu_source != CPU_WORKERS
        return "unknown" if gpu_unknown else "yes"

    def numbers(self) -> str:
        """Peak and capacity per GPU and per node, with where each capacity comes from."""
        estimate, capacity = self.estimate, self.capacity
        if capacity.gpu_source == CPU_WORKERS:  # their training state is in host RAM, counted there
            gpu = f"world size {self.world_size} ({CPU_WORKERS})"
        elif capacity.gpu_bytes is None:
            gpu = (f"peak {estimate.peak_per_gpu / GIB:.1f} GiB per GPU (not checked: {capacity.gpu_source}), "
                   f"world size {self.world_size}")
        else:
            gpu = (f"peak {estimate.peak_per_gpu / GIB:.1f} of {capacity.gpu_bytes / GIB:.1f} GiB per GPU "
                   f"({capacity.gpu_source}), world size {self.world_size}")
        if capacity.host_bytes is None:
            host = f"host RAM {estimate.host.total / GIB:.1f} GiB per node (not checked: {capacity.host_source})"
        else:
            host = (f"host RAM {estimate.host.total / GIB:.1f} of {capacity.host_bytes / GIB:.1f} GiB per node "
                    f"({capacity.host_source})")
        return f"{gpu}; {host}"

    def summary(self) -> str:
        line = f"fits: {self.word()}, {self.numbers()}"
        if self.word() == "maybe":
            line += (f"; {100 * (self.gpu_ratio - 1):.0f}% over, within the estimate's "
                     f"{100 * (REFUSAL_MARGIN - 1):.0f}% margin: train starts it with a warning")
        return line


def judge(cfg, world_size: int, capacity: Optional[Capacity] = None) -> Verdict:
    return Verdict(estimate_memory(cfg, world_size), capacity or machine_capacity(cfg), world_size)


# --------------------------------------------------------------------------- what would fit instead


@dataclass(frozen=True)
class Change:
    """An edit of the config, as the overrides a user would type."""
    lever: str  # one of LEVERS: the kind of change
    overrides: str
    apply: Callable[[object], None]  # edits a config in place
    switches_strategy: bool = False


# The kinds of change, in the order a user would rather give them up when several are needed: recomputing
# activations, smaller micro-batches, sharding, offloading, then quantizing the base.
LEVERS = ("checkpointing", "micro_batch", "sharding", "offload", "quantize")
# What the estimate reads of a config (data: whether rows are packed, for the attention kernel): copies of these are
# cheap enough to estimate dozens of alternatives.
ESTIMATED_SECTIONS = ("model", "method", "strategy", "train", "launcher", "cluster", "data")


def alternatives(cfg, world_size: int, capacity: Capacity) -> List[Tuple[str, Verdict]]:
    """(overrides, verdict) of what makes the run fit: each single change on the run's GPUs (where none does
    alone, the fewest changes together), and the fewest GPUs that fit (also with activation checkpointing, where
    that needs fewer)."""
    fitting = []
    for change in changes(cfg):
        if change.lever == "micro_batch":
            continue  # the largest micro-batch that fits is looked for below
        verdict = judge(_with(cfg, [change]), world_size, capacity)
        if verdict.fits:
            fitting.append((change.overrides, verdict))
    smaller_batch = _smaller_micro_batch(cfg, world_size, capacity)
    if smaller_batch:
        fitting.append(smaller_batch)
    if not fitting:
        fitting += _found(_fewest_changes(cfg, world_size, capacity))
    more = _more_gpus(cfg, world_size, capacity)
    fitting += _found(more)
    checkpointing = [change for change in changes(cfg) if change.lever == "checkpointing"]
    if checkpointing:
        more_checkpointed = _more_gpus(_with(cfg, checkpointing), world_size, capacity)
        if more_checkpointed and (not more or more_checkpointed[1].world_size < more[1].world_size):
            fitting.append((f"{checkpointing[0].overrides} {more_checkpointed[0]}", more_checkpointed[1]))
    return fitting


def _found(alternative: Optional[Tuple[str, Verdict]]) -> List[Tuple[str, Verdict]]:
    return [alternative] if alternative else []


def changes(cfg) -> List[Change]:
    """Each lever that lowers the peak and that the run does not pull already (a micro-batch of 1 for the
    micro-batch's)."""
    found = []
    spec = strategy_spec(cfg.strategy)
    if not cfg.train.activation_checkpointing:
        found.append(Change("checkpointing", "train.activation_checkpointing=true",
                            _setter("train.activation_checkpointing", True)))
    if cfg.train.micro_batch_size > 1:
        found.append(_micro_batch_change(cfg, 1))
    if spec.kind == "ddp":
        found.append(Change("sharding", "strategy=fsdp", _to_fsdp, switches_strategy=True))
    if spec.kind == "fsdp" and not cfg.strategy.cpu_offload:
        found.append(Change("offload", "strategy.cpu_offload=true", _setter("strategy.cpu_offload", True)))
    if spec.kind == "deepspeed" and cfg.strategy.stage < 3:
        found.append(Change("sharding", "strategy=zero3", _to_zero3(offload=False), switches_strategy=True))
    if spec.kind == "deepspeed" and not (cfg.strategy.offload_optimizer and cfg.strategy.offload_param):
        found.append(Change("offload", "strategy=zero3_offload", _to_zero3(offload=True), switches_strategy=True))
    if cfg.method.name != "qlora":
        if "qlora" in spec.methods:
            found.append(Change("quantize", "method=qlora", _to_qlora))
        else:  # DeepSpeed here trains full models only
            found.append(Change("quantize", "method=qlora strategy=fsdp", _to_qlora, switches_strategy=True))
    return found


def _fewest_changes(cfg, world_size: int, capacity: Capacity) -> Optional[Tuple[str, Verdict]]:
    """The smallest set of levers, pulled together in LEVERS' order, that makes the run fit, or None."""
    for size in range(2, len(LEVERS) + 1):
        for levers in itertools.combinations(LEVERS, size):
            changed, applied = _scratch(cfg), []
            for lever in levers:
                # Looked up on the changed config: after a switch from DDP to FSDP, FSDP's offload is a lever.
                change = next((c for c in changes(changed) if c.lever == lever), None)
                if change is None or (change.switches_strategy and any(c.switches_strategy for c in applied)):
                    break  # not possible together (or no different from fewer levers)
                change.apply(changed)
                applied.append(change)
            else:
                verdict = judge(changed, world_size, capacity)
                if verdict.fits:
                    return " ".join(c.overrides for c in applied), verdict
    return None


def _smaller_micro_batch(cfg, world_size: int, capacity: Capacity) -> Optional[Tuple[str, Verdict]]:
    """The largest micro-batch below the run's that fits, or None."""
    for size in range(cfg.train.micro_batch_size - 1, 0, -1):
        change = _micro_batch_change(cfg, size)
        verdict = judge(_with(cfg, [change]), world_size, capacity)
        if verdict.fits:
            return change.overrides, verdict
    return None


def _micro_batch_change(cfg, size: int) -> Change:
    """A smaller micro-batch, with the gradient accumulation that keeps the global batch where it divides."""
    train = cfg.train
    accumulation, remainder = divmod(train.grad_accum * train.micro_batch_size, size)
    keep = f" train.grad_accum={accumulation}" if remainder == 0 else ""

    def apply(changed) -> None:
        changed.train.micro_batch_size = size
        if remainder == 0:
            changed.train.grad_accum = accumulation
    return Change("micro_batch", f"train.micro_batch_size={size}{keep}", apply)


def _more_gpus(cfg, world_size: int, capacity: Capacity) -> Optional[Tuple[str, Verdict]]:
    """The smallest world size above the run's (up to MAX_WORLD_SIZE) that fits, as overrides, or None."""
    sizes = [size for size in (*range(2, GPUS_PER_NODE + 1), *range(2 * GPUS_PER_NODE, MAX_WORLD_SIZE + 1, GPUS_PER_NODE))
             if size > world_size]

    @functools.lru_cache(maxsize=None)
    def verdict(size: int) -> Verdict:
        changed = _scratch(cfg)
        changed.launcher.nnodes, changed.launcher.nproc_per_node = _layout(cfg, size)
        return judge(changed, size, capacity)

    # On one node the host's share grows with its ranks: each size is tried. Over several nodes of the same size
    # both the per-GPU and the per-node needs only fall as the world grows: a binary search finds the smallest.
    one_node = [size for size in sizes if _layout(cfg, size)[0] == 1]
    several = [size for size in sizes if _layout(cfg, size)[0] > 1]
    found = next((size for size in one_node if verdict(size).fits), None)
    if found is None and several:
        index = bisect.bisect_left(several, True, key=lambda size: verdict(size).fits)
        found = several[index] if index < len(several) else None
    return (_world_overrides(cfg, found), verdict(found)) if found else None


def _layout(cfg, world_size: int) -> Tuple[int, int]:
    """(nodes, GPUs per node) of a world: one node while it holds them all, else nodes of GPUS_PER_NODE (or of the
    run's own GPUs per node, if more)."""
    if cfg.launcher.nnodes == 1 and world_size <= GPUS_PER_NODE:
        return 1, world_size
    per_node = max(cfg.launcher.nproc_per_node or 1, GPUS_PER_NODE)
    return -(-world_size // per_node), per_node


def _world_overrides(cfg, world_size: int) -> str:
    nodes, per_node = _layout(cfg, world_size)
    if cfg.cluster.name == "slurm":
        return f"cluster.nodes={nodes} cluster.gpus_per_node={per_node}"
    if nodes == 1:
        return f"launcher.nproc_per_node={per_node}"
    return f"launcher.nnodes={nodes} launcher.nproc_per_node={per_node}"


def _scratch(cfg):
    """A copy of what the estimate reads, to change and estimate again (a whole config copies ~5x slower)."""
    return OmegaConf.create({key: cfg[key] for key in ESTIMATED_SECTIONS})


def _with(cfg, changes_to_apply: List[Change]):
    changed = _scratch(cfg)
    for change in changes_to_apply:
        change.apply(changed)
    return changed


def _setter(key: str, value) -> Callable[[object], None]:
    return lambda cfg: OmegaConf.update(cfg, key, value, merge=False)


def _to_qlora(cfg) -> None:
    """QLoRA with the run's LoRA settings where it has them (a full fine-tune gets QLoRA's defaults)."""
    kept = {key: cfg.method[key] for key in ("rank", "alpha", "dropout", "target_modules", "use_dora") if key in cfg.method}
    cfg.method = OmegaConf.merge(OmegaConf.structured(QLoraMethodConfig), kept)
    if "qlora" not in strategy_spec(cfg.strategy).methods:
        _to_fsdp(cfg)


def _to_fsdp(cfg) -> None:
    cfg.strategy = OmegaConf.structured(FSDPStrategyConfig)


def _to_zero3(offload: bool) -> Callable[[object], None]:
    def apply(cfg) -> None:  # as conf/strategy/zero3.yaml and zero3_offload.yaml set them
        cfg.strategy.name = "zero3_offload" if offload else "zero3"
        cfg.strategy.stage = 3
        cfg.strategy.offload_optimizer = cfg.strategy.offload_param = offload
    return apply


# --------------------------------------------------------------------------- plan and train


def fit_report(cfg, world_size: int) -> str:
    """`shardtune plan`'s verdict: fits or not, the numbers, and what would fit when it does not."""
    verdict = judge(cfg, world_size)
    lines = [verdict.summary()]
    if not verdict.fits:
        lines += _alternative_lines(cfg, world_size, verdict.capacity)
    return "\n".join(lines)


def check_memory(cfg, world_size: int) -> None:
    """The launcher's check of a planned run, before any worker starts: refuse (ConfigError) a run that clearly does
    not fit; warn about one at the edge, or about a refusal launcher.memory_check=false overrides; note what could
    not be checked."""
    try:
        verdict = judge(cfg, world_size)
    except ConfigError:
        raise
    except Exception as error:  # a model the estimate cannot size (e.g. not buildable on the meta device) may still train
        log.warning("memory check skipped: the estimate failed (%s: %s)", type(error).__name__, error)
        return
    capacity = verdict.capacity
    if capacity.gpu_bytes is None and capacity.gpu_source != CPU_WORKERS:
        log.info("memory check of the GPUs skipped: %s", capacity.gpu_source)
    if capacity.host_bytes is None:
        log.info("memory check of the host skipped: %s", capacity.host_source)
    if not verdict.refused:
        if not verdict.fits:
            log.warning("memory: %s", verdict.summary())
        return
    text = "\n".join([f"the run does not fit: {verdict.numbers()} (shardtune plan with the same overrides shows the "
                      f"estimate)", *_alternative_lines(cfg, world_size, verdict.capacity)])
    if cfg.launcher.memory_check:
        raise ConfigError("launcher.memory_check", f"{text}\nlauncher.memory_check=false starts it anyway")
    log.warning("launcher.memory_check=false: starting a run that does not fit by the estimate: %s", text)


def _alternative_lines(cfg, world_size: int, capacity: Capacity) -> List[str]:
    found = alternatives(cfg, world_size, capacity)
    if not found:
        return ["nothing shardtune can change fits it on these machines (even together, on up to "
                f"{MAX_WORLD_SIZE} GPUs)"]
    width = max(len(overrides) for overrides, _ in found)
    return ["what would fit, each estimated again:"] + [
        f"  {overrides:<{width}}  peak {verdict.estimate.peak_per_gpu / GIB:.1f} GiB per GPU, host RAM "
        f"{verdict.estimate.host.total / GIB:.1f} GiB per node" for overrides, verdict in found]
