"""Every strategy, registered once: its name, schema, kind, the methods it fits, how it shards the training
state (for the memory estimate) and which optimizer it steps with.

The launcher validates and plans from these entries and the workers build the implementation an entry names,
so adding a strategy is one entry here, its schema and its implementation under trainer/strategies/. Nothing
else asks "is this DeepSpeed?".
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

from omegaconf import MISSING


@dataclass
class DDPStrategyConfig:
    """torch DistributedDataParallel: every rank holds the whole model. One rank has nothing to all-reduce and trains
    without the wrapper; a full fine-tune in 16-bit there trains 16-bit weights with fp32 master weights and
    gradients."""
    name: str = "ddp"
    bucket_cap_mb: int = 25
    """Size of the gradient all-reduce buckets (several ranks; one rank has no wrapper)."""
    static_graph: bool = False
    """DDP's static_graph: the same parameters get gradients at every step (several ranks)."""


@dataclass
class FSDPStrategyConfig:
    """FSDP2 (torch.distributed.fsdp.fully_shard) per decoder layer, with a mixed-precision policy."""
    name: str = "fsdp"
    reshard_after_forward: bool = True
    """Free gathered weights after forward (ZeRO-3 like); false keeps them until backward (ZeRO-2 like)."""
    reduce_dtype: str = "fp32"
    """Dtype of the gradient reduce-scatter: fp32 or bf16."""
    cpu_offload: bool = False
    """Keep sharded parameters, gradients and optimizer state in host memory."""


@dataclass
class DeepSpeedStrategyConfig:
    """DeepSpeed ZeRO. The DeepSpeed JSON is generated from these fields and the train section."""
    name: str = MISSING
    stage: int = MISSING
    """ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters."""
    offload_optimizer: bool = False
    """Optimizer state and step on the CPU (DeepSpeedCPUAdam)."""
    offload_param: bool = False
    """Parameters in host memory between uses (stage 3 only)."""
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 50_000_000
    extra: Dict[str, Any] = field(default_factory=dict)
    """Expert keys merged last into the generated DeepSpeed JSON (e.g. {zero_optimization: {...}})."""


@dataclass(frozen=True)
class Sharding:
    """Over how many GPUs each training state is split, and which states live in host memory instead."""
    weights: int
    grads: int
    optimizer: int
    weights_offloaded: bool = False
    grads_offloaded: bool = False
    optimizer_offloaded: bool = False


# The optimizers a strategy steps with: torch's AdamW where the states are on the device, DeepSpeed's
# vectorised AdamW where they are in host memory.
ADAMW, CPU_ADAMW = "adamw", "cpu_adamw"


@dataclass(frozen=True)
class StrategySpec:
    name: str
    """The config group option (strategy=<name>) and the name in run names and messages."""
    kind: str
    """ddp, fsdp or deepspeed: the schema, the implementation and the rules of that family."""
    schema: type
    methods: Tuple[str, ...]
    """The methods it fits; other pairs are refused before anything starts."""
    implementation: str
    """module:class of the trainer's strategy object, imported only inside the workers."""
    sharding: Callable[[Any, int], Sharding]
    """(strategy config, world size) -> how the training state is spread."""
    optimizer: Callable[[Any], str]
    """(strategy config) -> ADAMW or CPU_ADAMW."""


def _replicated(strategy_cfg, world_size: int) -> Sharding:
    return Sharding(1, 1, 1)


def _fully_sharded(strategy_cfg, world_size: int) -> Sharding:
    offload = bool(strategy_cfg.cpu_offload)
    return Sharding(world_size, world_size, world_size, offload, offload, offload)


def _zero_sharding(strategy_cfg, world_size: int) -> Sharding:
    stage = strategy_cfg.stage
    return Sharding(weights=world_size if stage >= 3 else 1, grads=world_size if stage >= 2 else 1,
                    optimizer=world_size, weights_offloaded=bool(strategy_cfg.offload_param),
                    optimizer_offloaded=bool(strategy_cfg.offload_optimizer))


def _torch_adamw(strategy_cfg) -> str:
    # FSDP's cpu_offload keeps the states on the host too, but as plain tensors that torch's AdamW steps.
    return ADAMW


def _zero_optimizer(strategy_cfg) -> str:
    return CPU_ADAMW if strategy_cfg.offload_optimizer else ADAMW


def _deepspeed(name: str) -> StrategySpec:
    # zero1 .. zero3_offload differ only in the stage and offload fields their YAML sets.
    return StrategySpec(name, "deepspeed", DeepSpeedStrategyConfig, ("full",),
                        "shardtune.trainer.strategies.deepspeed:DeepSpeedStrategy", _zero_sharding, _zero_optimizer)


# In the order error messages list them.
STRATEGIES: Dict[str, StrategySpec] = {spec.name: spec for spec in (
    *map(_deepspeed, ("zero1", "zero2", "zero3", "zero3_offload")),
    StrategySpec("ddp", "ddp", DDPStrategyConfig, ("full", "lora", "qlora"), "shardtune.trainer.strategies.ddp:DDPStrategy",
                 _replicated, _torch_adamw),
    StrategySpec("fsdp", "fsdp", FSDPStrategyConfig, ("full", "lora", "qlora"),
                 "shardtune.trainer.strategies.fsdp:FSDPStrategy",
                 _fully_sharded, _torch_adamw),
)}
# One schema per kind, stored in Hydra's ConfigStore as schema/strategy/<kind>.
SCHEMAS: Dict[str, type] = {spec.kind: spec.schema for spec in STRATEGIES.values()}


def strategy_spec(strategy_cfg) -> StrategySpec:
    """The entry of a strategy config (validation has refused unknown names before anything uses this)."""
    return STRATEGIES[strategy_cfg.name]


def strategies_for(method: str) -> Tuple[str, ...]:
    return tuple(name for name, spec in STRATEGIES.items() if method in spec.methods)
