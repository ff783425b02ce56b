"""The trial step that confirms the micro batch on the GPU before training (train.micro_batch_trial, which
train.micro_batch_size=auto turns on).

The launcher chose the micro batch from a memory estimate (launcher/micro_batch.py) that aims at within 15% of measured
peaks. Before the first step every rank runs one forward and backward at that size on rows of train.seq_len tokens (the
longest a real batch can be), with the optimizer's states in memory, or a stand-in of their size while a fresh
optimizer has none yet (AdamW allocates them at its first step, and every later step's backward runs beside them).
If any rank runs out of memory, all ranks halve the micro batch and double grad_accum, and try again.

The global batch stays, and so does what each step reads: the sampler gives each rank one sequence of rows, and step k
reads its rows k*B .. (k+1)*B-1 (B = micro_batch_size * grad_accum) however they are split into micro-batches. The run
reads its data as if the final micro batch had been chosen from the start; the trial reads none of it.

No trial under DeepSpeed: its engine fixes the micro batch and the accumulation steps when it starts.
"""
import functools
import gc
import logging
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

log = logging.getLogger("shardtune")

TRIAL_STRATEGY_KINDS = ("ddp", "fsdp")  # the strategies whose micro batch may change after they start


def runs_trial(cfg, device: torch.device, strategy_kind: str) -> bool:
    return cfg.train.micro_batch_trial and device.type == "cuda" and strategy_kind in TRIAL_STRATEGY_KINDS


def next_smaller(size: int, rows_per_step: int) -> Optional[int]:
    """The largest micro batch of at most half `size` that divides the rows a rank reads per step (so that grad_accum
    stays whole); None below 1."""
    return next((smaller for smaller in range(size // 2, 0, -1) if rows_per_step % smaller == 0), None)


def confirm_micro_batch(size: int, rows_per_step: int, try_step: Callable[[int], None],
                        any_rank_failed: Callable[[bool], bool]) -> int:
    """The largest micro batch, from `size` down, at which `try_step` runs out of GPU memory on no rank.

    any_rank_failed(failed) is the agreement: every rank calls it after every try, and all get the same answer, so all
    go on with the same size.
    """
    while True:
        failed = False
        try:
            try_step(size)
        except torch.cuda.OutOfMemoryError:
            failed = True  # memory is freed below, once the exception and the tensors its traceback holds are gone
        if not any_rank_failed(failed):
            return size
        gc.collect()
        torch.cuda.empty_cache()
        smaller = next_smaller(size, rows_per_step)
        if smaller is None:
            raise RuntimeError(f"train.micro_batch_size: the trial step ran out of GPU memory at micro batch {size} on "
                               f"some rank; `shardtune plan` with the same overrides shows the estimate and what would "
                               f"fit instead")
        log.warning("micro batch trial: %d ran out of GPU memory on some rank; trying %d with grad_accum %d (the same "
                    "global batch)", size, smaller, rows_per_step // smaller)
        size = smaller


def confirm_on_gpu(strategy, train, device: torch.device) -> int:
    """The trial of train.micro_batch_size on this run's strategy (collective): the size that fits on every rank."""
    # The first micro-batch of a step syncs gradients only without accumulation; the trial takes its memory.
    step = functools.partial(trial_step, strategy, train.seq_len, device, train.grad_accum == 1)
    size = confirm_micro_batch(train.micro_batch_size, train.micro_batch_size * train.grad_accum, step,
                               functools.partial(any_rank, device=device))
    torch.cuda.reset_peak_memory_stats(device)  # the peaks logged are training's, not the trial's
    return size


def trial_step(strategy, seq_len: int, device: torch.device, sync: bool, size: int) -> None:
    """One forward and backward of `size` rows of seq_len tokens; nothing of it stays: the gradients are dropped and
    the random state (dropout) is restored."""
    with torch.random.fork_rng(devices=[device]):
        try:
            stand_in = torch.empty(missing_optimizer_state_bytes(strategy.optimizer, device), dtype=torch.uint8,
                                   device=device)
            tokens = torch.zeros((size, seq_len), dtype=torch.long, device=device)
            with strategy.trial_gradient_sync(sync):
                with strategy.autocast():
                    loss = strategy.model(input_ids=tokens, labels=tokens).loss
                strategy.backward(loss)
            del stand_in, loss
        except torch.cuda.OutOfMemoryError:
            strategy.reset_after_failed_step()
            raise
        finally:
            strategy.zero_grad()


def missing_optimizer_state_bytes(optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    """What AdamW allocates at its first step for the parameters on `device` that have no state yet: two moments, each
    as large as the parameter's shard on this rank (parameters offloaded to the host are not on `device`)."""
    total = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            local = param.to_local() if isinstance(param, DTensor) else param
            if param not in optimizer.state and local.device == device:
                total += 2 * local.numel() * local.element_size()
    return total


def any_rank(failed: bool, device: torch.device) -> bool:
    flag = torch.tensor([int(failed)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
