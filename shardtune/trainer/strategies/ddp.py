"""DistributedDataParallel: every rank holds the whole model; gradients are all-reduced in buckets. One rank trains
without the wrapper; a full fine-tune in 16-bit there on 16-bit weights with fp32 masters (trainer/master_weights.py)."""
import contextlib
import logging

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ...strategy_registry import DDPStrategyConfig
from .. import master_weights
from ..model import keep_adapter_inputs_as_they_come
from .base import Strategy

log = logging.getLogger("shardtune")
DDP_DEFAULTS = DDPStrategyConfig()


class DDPStrategy(Strategy):
    def wrap(self, model, make_optimizer, make_scheduler):
        self.module = model
        self.masters = None
        if master_weights.applies("ddp", self.cfg.method.name, dist.get_world_size(), self.cfg.train.precision):
            self.masters = master_weights.MasterWeights(model, self.dtype)
        elif self.dtype != torch.float32:  # forward runs under autocast (Strategy.autocast)
            keep_adapter_inputs_as_they_come(model)
        if dist.get_world_size() == 1:
            # Nothing to all-reduce. Without the wrapper the gradients also appear as backward reaches them, as in
            # a plain loop, instead of living in DDP's buckets all step (8B LoRA's adapters: 0.16 GiB).
            self.model = model
            log.info("ddp on one rank: nothing to all-reduce, so no DDP wrapper%s", "" if self.masters is None else
                     f"; {self.cfg.train.precision} weights for compute, fp32 master weights and gradients for the step")
            options = self.cfg.strategy
            if (options.bucket_cap_mb, options.static_graph) != (DDP_DEFAULTS.bucket_cap_mb, DDP_DEFAULTS.static_graph):
                log.warning("strategy.bucket_cap_mb and strategy.static_graph have no effect on one rank (no wrapper)")
        else:
            self._wrap_in_ddp(model)
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        self.scheduler = make_scheduler(self.optimizer)

    def _wrap_in_ddp(self, model):
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # gradient_as_bucket_view: gradients as views into the all-reduce buckets, one copy of them instead of two and
        # no copy between them at every backward (the memory estimate counts one copy). broadcast_buffers=False: a
        # language model's buffers (rotary frequencies) are constants every rank computes alike, and broadcasting them
        # at every forward left the GPU idle 1-3 ms per micro-batch while the host packed them (a 1B LoRA profile).
        self.model = DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=self.cfg.strategy.bucket_cap_mb,
                                             static_graph=self.cfg.strategy.static_graph,
                                             gradient_as_bucket_view=True, broadcast_buffers=False)

    def autocast(self):
        if self.masters is None:
            return super().autocast()
        self.masters.compute()  # the weights are 16-bit already: no autocast
        return contextlib.nullcontext()

    def step(self, skip_nonfinite=False):
        if self.masters is None:
            return super().step(skip_nonfinite)
        self.masters.show_masters()
        grad_norm = super().step(skip_nonfinite)  # ends with zero_grad, which drops the summed gradients
        self.masters.refresh_copies()
        return grad_norm

    def zero_grad(self):
        super().zero_grad()
        if self.masters is not None:
            self.masters.drop_grads()

    def weight_copies_bytes(self):
        return 0 if self.masters is None else self.masters.copies_bytes()

    def _checkpoint_state(self):
        if self.masters is not None:
            self.masters.show_masters()  # checkpoints hold the fp32 masters, as DDP's do
        return super()._checkpoint_state()

    def load(self, directory):
        super().load(directory)  # into the masters (_checkpoint_state shows them)
        if self.masters is not None:
            self.masters.refresh_copies()

    def gather_state_dict(self):
        if self.masters is not None:
            self.masters.show_masters()
        return super().gather_state_dict()

    def gradient_sync(self, enabled):
        wrapped = isinstance(self.model, DistributedDataParallel)
        return self.model.no_sync() if wrapped and not enabled else contextlib.nullcontext()

    def trial_gradient_sync(self, enabled):
        # The same memory either way (DDP's buckets exist from the start), and no collective: a rank that runs out of
        # memory alone cannot leave the others waiting in an all-reduce, nor DDP's reducer half-way through one.
        return self.gradient_sync(False)
