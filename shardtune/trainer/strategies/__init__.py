"""Strategies: how the model and optimizer are spread over ranks. `make_strategy` picks one by name."""
from .base import Strategy


def make_strategy(cfg, device, dtype) -> Strategy:
    if "stage" in cfg.strategy:
        from .deepspeed import DeepSpeedStrategy
        return DeepSpeedStrategy(cfg, device, dtype)
    if cfg.strategy.name == "fsdp":
        from .fsdp import FSDPStrategy
        return FSDPStrategy(cfg, device, dtype)
    from .ddp import DDPStrategy
    return DDPStrategy(cfg, device, dtype)
