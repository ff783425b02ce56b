"""Steps whose loss or gradients are NaN or infinite: skipped up to `train.skip_nonfinite_steps`, then the run stops.

The check reads the gradient norm, which the strategy computes over every rank's synchronised gradients: a NaN or
inf loss on one rank reaches its gradients, the gradient all-reduce carries them to every rank, and every rank sees
the same non-finite norm. So all ranks skip the same steps, or stop after the same step, with no extra collective.
A skipped step updates nothing (the strategy drops its gradients and leaves the optimizer alone) but counts as a
step: its data is consumed and the learning-rate schedule moves on, as in OLMo-core's skip-step optimizer.

Fault injection for tests: SHARDTUNE_INJECT_NONFINITE="RANK:STEP:KIND,..." multiplies that rank's loss at that step
by NaN (kind nan) or by 1e30 (overflow: a finite loss whose gradients' norm overflows to inf). An environment
variable read once at start-up, rather than a poisoned data row: the tiny test model cannot be made to overflow by
data alone, and the loop pays one dictionary lookup per micro-batch.
"""
import logging
import math
import os
from typing import Optional

import torch

log = logging.getLogger("shardtune")
INJECT_ENV = "SHARDTUNE_INJECT_NONFINITE"
_FACTORS = {"nan": float("nan"), "overflow": 1e30}


def injected_faults(rank: int) -> dict:
    """{step: factor} that SHARDTUNE_INJECT_NONFINITE asks this rank to multiply its loss by."""
    faults = {}
    for entry in filter(None, os.environ.get(INJECT_ENV, "").split(",")):
        fault_rank, step, kind = entry.split(":")
        if int(fault_rank) == rank:
            faults[int(step)] = _FACTORS[kind]
    return faults


class NonfiniteSteps:
    def __init__(self, max_skips: int, rank: int):
        self.max_skips = max_skips
        self.skipped = 0
        self.rank = rank
        self.faults = injected_faults(rank)

    def inject(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """The loss, made NaN or inf where a test injected a fault at this step."""
        return loss * self.faults[step] if step in self.faults else loss

    def may_skip(self) -> bool:
        return self.skipped < self.max_skips

    def check(self, step: int, grad_norm: Optional[float], dtype: torch.dtype) -> bool:
        """Whether `step` was skipped; raises FloatingPointError when a bad step finds no skip left. Under fp16 the
        loss scaler skips steps whose gradients overflowed, by design: those are not faults."""
        if grad_norm is None or math.isfinite(grad_norm) or dtype == torch.float16:
            return False
        if not self.may_skip():
            raise FloatingPointError(
                f"gradient norm is {grad_norm} at step {step}: training diverged (optim.lr too high?) or some rank's "
                f"loss was NaN or inf; stopping after {self.skipped} skipped step(s) "
                f"(train.skip_nonfinite_steps={self.max_skips})")
        self.skipped += 1
        if self.rank == 0:
            log.warning("step %d skipped: gradient norm is %s (a NaN or inf loss on some rank); no update, "
                        "gradients dropped (%d of train.skip_nonfinite_steps=%d)", step, grad_norm, self.skipped,
                        self.max_skips)
        return True
