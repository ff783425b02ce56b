"""FSDP2: `fully_shard` on every decoder layer, then on the root, with a mixed-precision policy.

Parameters, gradients and optimizer state are sharded over ranks; each layer's weights are all-gathered just
before it runs. The model is sharded before its weights exist (sharded_loading.py): no rank ever holds all of
it, QLoRA's packed 4-bit base included.
"""
import contextlib

import torch
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from ...precision import DTYPES
from .. import fp8
from ..model import decoder_layers
from ..sharded_loading import build_sharded_model
from .base import Strategy


class FSDPStrategy(Strategy):
    def build_model(self, source):
        # Offloaded shards live in host memory; FSDP copies each layer to the GPU when it runs.
        param_device = torch.device("cpu") if self.cfg.strategy.cpu_offload else self.device
        return build_sharded_model(self.cfg, source, self.device, self.dtype, self.shard, param_device)

    def shard(self, model: torch.nn.Module) -> None:
        options = self.cfg.strategy  # reduce_dtype is fp32 or bf16 (launcher/validation.py)
        mixed = self.dtype != torch.float32
        # A 4-bit base is packed in a storage dtype equal to the compute dtype (validation.py), so casting it to
        # param_dtype for the all-gather leaves its bits alone.
        shard_options = dict(
            mp_policy=MixedPrecisionPolicy(param_dtype=self.dtype if mixed else None,
                                           reduce_dtype=DTYPES[options.reduce_dtype] if mixed else None),
            # Pinned host memory speeds up copies to a GPU; without one there is nothing to pin for.
            offload_policy=(CPUOffloadPolicy(pin_memory=self.device.type == "cuda") if options.cpu_offload
                            else OffloadPolicy()),
        )
        if self.fp8_recipe != "none":  # before sharding: FSDP2 then all-gathers float8 weights
            fp8.convert(model, self.fp8_recipe, sharded=True)
        for layer in decoder_layers(model):
            fully_shard(layer, reshard_after_forward=options.reshard_after_forward, **shard_options)
        # The root holds embeddings and the head; they are used last in backward, so keep them gathered.
        fully_shard(model, reshard_after_forward=False, **shard_options)

    def wrap(self, model, make_optimizer, make_scheduler):
        self.model = self.module = model  # sharded by build_model
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        self.scheduler = make_scheduler(self.optimizer)

    def autocast(self):
        return contextlib.nullcontext()  # the mixed-precision policy casts weights and inputs itself

    def step(self, skip_nonfinite: bool = False) -> float:
        grad_norm = super().step(skip_nonfinite)
        fp8.after_optimizer_step(self.model, self.fp8_recipe, sharded=True)
        return grad_norm

    def gradient_sync(self, enabled):
        self.model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def reset_after_failed_step(self):
        # FSDP2 keeps per-step state (gathered layers, a queued end-of-backward callback) that an exception leaves
        # behind; the next step would skip the gradient reduction. FSDPModule.reset_iter_state clears it (torch 2.13
        # has it; older releases lack it).
        if not hasattr(self.model, "reset_iter_state"):
            raise RuntimeError(f"train.micro_batch_size: FSDP2 cannot go on after running out of memory with torch "
                               f"{torch.__version__}, which lacks FSDPModule.reset_iter_state; set "
                               f"train.micro_batch_size to a smaller number")
        self.model.reset_iter_state()
