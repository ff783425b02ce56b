"""DeepSpeed ZeRO stages 1-3 with optional CPU offload, behind the same interface as DDP and FSDP.

The DeepSpeed JSON is generated from the typed strategy and train fields; `strategy.extra` is merged
last for expert keys. DeepSpeed owns mixed precision (bf16/fp16 weights, fp32 masters in the
optimizer), gradient clipping and the accumulation boundary.
"""
import contextlib
import copy
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from ..model import decoder_layers
from ..zero3_loading import build_partitioned_model
from . import universal_checkpoint
from .base import Strategy

CHECKPOINT_TAG = "deepspeed"


def deep_merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def deepspeed_config(cfg, dtype: torch.dtype) -> dict:
    """The DeepSpeed JSON for this run (also printed by `shardtune plan`)."""
    zero, train = cfg.strategy, cfg.train
    zero_optimization = {
        "stage": zero.stage,
        "overlap_comm": zero.overlap_comm,
        "contiguous_gradients": zero.contiguous_gradients,
        "reduce_bucket_size": zero.reduce_bucket_size,
    }
    if zero.offload_optimizer:
        zero_optimization["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if zero.offload_param:
        zero_optimization["offload_param"] = {"device": "cpu", "pin_memory": True}
    if zero.stage == 3:
        zero_optimization["stage3_gather_16bit_weights_on_model_save"] = True
    config = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.grad_clip,
        # DeepSpeed's bf16 overflow check (ZeRO-1/2) launches a few small kernels per parameter before the step:
        # on one H100 ZeRO-2 went from 0.87x to 0.94x of FSDP2's speed without it. The loop needs no such check: it
        # stops on a non-finite gradient norm, which DeepSpeed computes anyway, after the same step and before
        # anything is saved (skipping bad steps is refused with DeepSpeed). fp16's loss scaler keeps its check.
        "bf16": {"enabled": dtype == torch.bfloat16, "check_grad_overflow": False},
        "fp16": {"enabled": dtype == torch.float16, "loss_scale": 0},
        "zero_optimization": zero_optimization,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # shardtune logs progress itself
        "wall_clock_breakdown": False,
    }
    return deep_merge(config, OmegaConf.to_container(zero.extra, resolve=True))


class DeepSpeedStrategy(Strategy):
    def __init__(self, cfg, device, dtype):
        super().__init__(cfg, device, dtype)
        self.config = deepspeed_config(cfg, dtype)
        self._hf_deepspeed_config = None
        self.load_root = None  # where `load` reads from: the checkpoint, or its universal form (prepare_resume)

    @property
    def compile_block_hooks(self):
        return self.cfg.strategy.stage != 3  # ZeRO-3's hooks are marked for the compiler not to trace

    def build_model(self, source):
        if self.cfg.strategy.stage != 3:
            return super().build_model(source)
        # While this object lives, transformers builds models under zero.Init, partitioned as they are built.
        from transformers.integrations import HfDeepSpeedConfig
        self._hf_deepspeed_config = HfDeepSpeedConfig(self.config)
        return build_partitioned_model(self.cfg, source, self.device, self.dtype)

    def expose_head_to_fused_loss(self, model):
        if self.cfg.strategy.stage != 3:
            return
        # ZeRO-3 gathers a weight around its own module's forward; the head's is read by the model's forward
        # (and a tied head's embedding is released after the embedding runs): gather it for the model's forward.
        import deepspeed
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        deepspeed.zero.register_external_parameter(base, base.get_output_embeddings().weight)

    def wrap(self, model, make_optimizer, make_scheduler):
        import deepspeed
        if self.cfg.strategy.stage == 3:
            # ZeRO-3 gathers each decoder block's weights at once, as FSDP2's units, not one module at a time: fewer,
            # larger all-gathers, and no ZeRO hook inside a block (the compiler must not trace them: 73 graph breaks
            # on a 1B model, which then ran at 0.45x FSDP2's speed).
            deepspeed.utils.set_z3_leaf_modules(model, list({type(layer) for layer in decoder_layers(model)}))
        self.module = model
        self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=make_optimizer, lr_scheduler=make_scheduler, config=self.config)

    def autocast(self):
        return contextlib.nullcontext()  # DeepSpeed keeps the weights in 16-bit itself

    def backward(self, loss):
        # The loss is already normalised over the whole accumulation window (tokens of all micro-batches
        # and ranks), so DeepSpeed must not divide it by the accumulation steps again.
        self.model.backward(loss, scale_wrt_gas=False)
        if not self.model.is_gradient_accumulation_boundary():
            self.model.step()  # advances DeepSpeed's micro-step counter; no optimizer step happens

    def step(self, skip_nonfinite: bool = False):
        # skip_nonfinite is refused with DeepSpeed before any worker starts (launcher/validation.py): its engine
        # steps the optimizer where the loop cannot hold it back.
        assert not skip_nonfinite, "train.skip_nonfinite_steps with DeepSpeed"
        self.model.step()  # at the boundary: clip, optimizer step, scheduler step, zero gradients
        grad_norm = self.model.get_global_grad_norm()
        return float(grad_norm) if grad_norm is not None else None  # None: not reported, not a fault

    def prepare_resume(self, directory, saved_world_size):
        # ZeRO's partitions load only on the world size that saved them; another one loads the universal form, which
        # the engine must be told of before it starts.
        if saved_world_size != dist.get_world_size():
            self.load_root = universal_checkpoint.convert_once(directory, CHECKPOINT_TAG, saved_world_size, self.device)
            self.config["checkpoint"] = {**self.config.get("checkpoint", {}), "load_universal": True}

    def save(self, directory: Path):
        self.model.save_checkpoint(str(directory), tag=CHECKPOINT_TAG)

    def checkpoint_bytes(self) -> int:
        """An estimate from the parameters: the module's weights, and fp32 master weights and Adam's two moments
        for the trainable ones (ZeRO-3 partitions a parameter: its whole size is ds_numel)."""
        total = 0
        for p in self.module.parameters():
            numel = getattr(p, "ds_numel", p.numel())
            total += numel * p.element_size() + (numel * 12 if p.requires_grad else 0)
        return total

    def load(self, directory: Path):
        # The scheduler's state comes from trainer_state.json, as for every strategy.
        path, _ = self.model.load_checkpoint(str(self.load_root or directory), tag=CHECKPOINT_TAG,
                                             load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"resume: no DeepSpeed checkpoint in {directory}")

    def gather_state_dict(self):
        if self.cfg.strategy.stage == 3:
            state = self.model._zero3_consolidated_16bit_state_dict()  # collective; filled on rank 0
        else:
            state = self.module.state_dict()
        return {k: v.cpu() for k, v in state.items()} if dist.get_rank() == 0 else None
