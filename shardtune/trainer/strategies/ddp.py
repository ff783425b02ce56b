"""DistributedDataParallel: every rank holds the whole model; gradients are all-reduced in buckets."""
import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from ..model import keep_adapter_inputs_as_they_come
from .base import Strategy


class DDPStrategy(Strategy):
    def wrap(self, model, make_optimizer, make_scheduler):
        self.module = model
        if self.dtype != torch.float32:  # forward runs under autocast (Strategy.autocast)
            keep_adapter_inputs_as_they_come(model)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # gradient_as_bucket_view: gradients as views into the all-reduce buckets, one copy of them instead of two and
        # no copy between them at every backward (the memory estimate counts one copy). broadcast_buffers=False: a
        # language model's buffers (rotary frequencies) are constants every rank computes alike, and broadcasting them
        # at every forward left the GPU idle 1-3 ms per micro-batch while the host packed them (a 1B LoRA profile).
        self.model = DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=self.cfg.strategy.bucket_cap_mb,
                                             static_graph=self.cfg.strategy.static_graph,
                                             gradient_as_bucket_view=True, broadcast_buffers=False)
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        self.scheduler = make_scheduler(self.optimizer)

    def gradient_sync(self, enabled):
        return contextlib.nullcontext() if enabled else self.model.no_sync()

    def trial_gradient_sync(self, enabled):
        # The same memory either way (DDP's buckets exist from the start), and no collective: a rank that runs out of
        # memory alone cannot leave the others waiting in an all-reduce, nor DDP's reducer half-way through one.
        return self.model.no_sync()
