"""AdamW and the learning-rate schedule (linear warmup, then cosine, linear or constant)."""
import math

import torch

from ..strategy_registry import ADAMW, CPU_ADAMW


def make_optimizer_factory(optim_cfg, device: torch.device, optimizer: str = ADAMW):
    """A function from trainable parameters to the optimizer (strategies call it after wrapping). `optimizer`: the
    strategy's choice (strategy_registry), ADAMW or CPU_ADAMW."""

    def make_optimizer(params):
        params = list(params)
        # Weight decay on matrices only: decaying norms and biases hurts and is not what AdamW papers do.
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": optim_cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        kwargs = dict(lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)
        if optimizer == CPU_ADAMW:
            from deepspeed.ops.adam import DeepSpeedCPUAdam  # vectorised AdamW over host memory
            return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
        fused = optim_cfg.fused if optim_cfg.fused is not None else device.type == "cuda"
        return torch.optim.AdamW(groups, fused=fused, **kwargs)

    return make_optimizer


def lr_multiplier(step: int, total_steps: int, optim_cfg) -> float:
    """Factor on optim.lr before optimizer step `step` (0-based)."""
    warmup = optim_cfg.warmup_steps
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if optim_cfg.scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = optim_cfg.min_lr_ratio
    if optim_cfg.scheduler == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler_factory(optim_cfg, total_steps: int):
    def make_scheduler(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, optim_cfg))

    return make_scheduler
