"""FSDP2: `fully_shard` on every decoder layer, then on the root, with a mixed-precision policy.

Parameters, gradients and optimizer state are sharded over ranks; each layer's weights are
all-gathered just before it runs. Weights quantized by bitsandbytes are left out of sharding: they
are frozen, already 4x smaller, and FSDP's flat sharding would separate their packed storage from
the quantization state that decodes it.
"""
import contextlib

import torch
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from ...precision import DTYPES
from ..model import decoder_layers, is_quantized
from .base import Strategy


class FSDPStrategy(Strategy):
    def wrap(self, model, make_optimizer, make_scheduler):
        options = self.cfg.strategy  # reduce_dtype is fp32 or bf16 (launcher/validation.py)
        mixed = self.dtype != torch.float32
        shard_options = dict(
            mp_policy=MixedPrecisionPolicy(param_dtype=self.dtype if mixed else None,
                                           reduce_dtype=DTYPES[options.reduce_dtype] if mixed else None),
            offload_policy=CPUOffloadPolicy() if options.cpu_offload else OffloadPolicy(),
            ignored_params={p for p in model.parameters() if is_quantized(p)} or None,
        )
        for layer in decoder_layers(model):
            fully_shard(layer, reshard_after_forward=options.reshard_after_forward, **shard_options)
        # The root holds embeddings and the head; they are used last in backward, so keep them gathered.
        fully_shard(model, reshard_after_forward=False, **shard_options)
        self.model = self.module = model
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        self.scheduler = make_scheduler(self.optimizer)

    def autocast(self):
        return contextlib.nullcontext()  # the mixed-precision policy casts weights and inputs itself

    def gradient_sync(self, enabled):
        self.model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
