"""The interface every strategy implements, and the torch.distributed.checkpoint code DDP and FSDP share.

A strategy owns how the model and optimizer are spread over ranks: wrapping, the backward pass,
gradient synchronisation, the optimizer step, sharded checkpoints and gathering the final weights.
The training loop calls only these methods, so it never asks which strategy it runs.
"""
import contextlib
import math
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.tensor import DTensor

from ...strategy_registry import strategy_spec
from .. import fp8
from ..model import build_model
from ..save_faults import storage_writer

OptimizerFactory = Callable[[list], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def _tensor_bytes(state) -> int:
    """Bytes of the tensors in a (nested) state dict: what a checkpoint of it writes, at least."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_tensor_bytes(value) for value in state)
    return 0


class Strategy:
    # torch.compile traces a decoder block's hooks with the block (FSDP2's are written to be traced). A strategy whose
    # hooks the compiler must not trace says False: then only the block's forward is compiled, its hooks run eagerly.
    compile_block_hooks = True

    def __init__(self, cfg, device: torch.device, dtype: torch.dtype):
        self.cfg = cfg
        self.device = device
        self.dtype = dtype  # compute dtype: bf16/fp16 under mixed precision, fp32 otherwise
        self.model: torch.nn.Module  # what forward is called on (possibly wrapped)
        self.module: torch.nn.Module  # the plain transformers/peft model inside
        self.optimizer: torch.optim.Optimizer
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        self._trainable: Optional[list] = None  # the parameters `step` clips, in model order
        # LoRA checkpoints hold only the adapters; the frozen base is reloaded from its source.
        self.trainable_only = cfg.method.name != "full"
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 do not.
        self.grad_scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.fp8_recipe, self.fp8_why_not = fp8.choose(cfg.train, device.type, cfg.method.name,
                                                       strategy_spec(cfg.strategy).kind)
        fp8.check_device(self.fp8_recipe, device)

    # -- building ------------------------------------------------------------------------
    def build_model(self, source: str) -> torch.nn.Module:
        """The model of the run's method, its weights from `source`, ready for `wrap`. Whole on every rank here;
        FSDP and ZeRO-3 build it sharded instead."""
        model = build_model(self.cfg, source, self.device, self.dtype)
        if self.fp8_recipe != "none":
            fp8.convert(model, self.fp8_recipe, sharded=False)
        return model

    def expose_head_to_fused_loss(self, model: torch.nn.Module) -> None:
        """A fused loss reads the output head's weight in the model's forward, not in the head's own. Nothing to do
        where that weight is whole there: DDP, and FSDP2 (the head is in the root unit, gathered all forward)."""

    def wrap(self, model: torch.nn.Module, make_optimizer: OptimizerFactory, make_scheduler: SchedulerFactory) -> None:
        raise NotImplementedError

    # -- one optimizer step --------------------------------------------------------------
    def autocast(self):
        """Context for forward passes: autocast under mixed precision unless the wrapper casts itself."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def gradient_sync(self, enabled: bool):
        """Context for one micro-batch's forward and backward. enabled=False on all but the last
        micro-batch of an accumulation window: gradients then only accumulate locally."""
        return contextlib.nullcontext()

    def trial_gradient_sync(self, enabled: bool):
        """Context for the micro batch trial's forward and backward (trainer/micro_batch_trial.py), which must take the
        memory of a micro-batch with gradient sync `enabled`: that sync itself, unless a strategy has a cheaper way."""
        return self.gradient_sync(enabled)

    def reset_after_failed_step(self) -> None:
        """Make the model usable again after a forward or backward stopped by an exception (out of memory)."""

    def backward(self, loss: torch.Tensor) -> None:
        self.grad_scaler.scale(loss).backward()

    def step(self, skip_nonfinite: bool = False) -> float:
        """Clip, step the optimizer and scheduler, zero the gradients; return the pre-clip gradient norm, which is
        the same on every rank. skip_nonfinite: where that norm is NaN or inf, leave the weights and the optimizer
        alone (trainer/nonfinite.py)."""
        if self._trainable is None:  # listed once: walking a LoRA model's thousands of modules takes milliseconds
            self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.grad_scaler.unscale_(self.optimizer)
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self._trainable, max_norm)
        if hasattr(grad_norm, "full_tensor"):  # DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        # Reading the norm waits for the GPU. Only a step that may be skipped needs it before the update; otherwise
        # it is read after the update is queued, so the GPU is not left idle while the host launches it.
        if not (skip_nonfinite and not math.isfinite(grad_norm.item())):
            self.grad_scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
            self.grad_scaler.update()
        self.scheduler.step()
        self.zero_grad()
        return grad_norm.item()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def weight_copies_bytes(self) -> int:
        """Bytes of weight copies this rank keeps beside its parameters (for the weights it reports holding)."""
        return 0

    # -- checkpoints (torch.distributed.checkpoint: each rank writes its own shards) ------------
    def prepare_resume(self, directory: Path, saved_world_size: int) -> None:
        """Called before the model is built when the run resumes from `directory`, written on `saved_world_size`
        ranks. Nothing to do here: DCP reshards on load by itself, reading each saved tensor (a DTensor's shards under
        FSDP2, DDP's whole tensors) into whatever layout this run's state dict asks for."""

    def _state_options(self, **kw) -> StateDictOptions:
        return StateDictOptions(ignore_frozen_params=self.trainable_only, **kw)

    def _trainable_parameters(self) -> dict:
        # Built by hand for LoRA: torch's get_model_state_dict walks every state-dict key, and
        # bitsandbytes' 8-bit layers add keys (SCB, weight_format) that are not module attributes.
        return {name: p for name, p in self.module.named_parameters() if p.requires_grad}

    def _model_state(self) -> dict:
        if self.trainable_only:
            return self._trainable_parameters()  # the adapters; the frozen base is reloaded from its source
        return get_model_state_dict(self.model, options=self._state_options())

    def _checkpoint_state(self) -> dict:
        return {"model": self._model_state(),
                "optim": get_optimizer_state_dict(self.model, self.optimizer, options=self._state_options())}

    def save(self, directory: Path) -> None:
        dcp.save(self._checkpoint_state(), storage_writer=storage_writer(directory / "state", dist.get_rank()))

    def save_async(self, directory: Path, group: dist.ProcessGroup) -> Future:
        """Copy the state to host memory now and write it in a background thread, whose collectives run on
        `group` (gloo; not the training's group, which the loop keeps using meanwhile). The future is done when
        this rank's part is written, and holds DCP's CheckpointException (every rank's) when some rank failed."""
        return dcp.async_save(self._checkpoint_state(), process_group=group,
                              storage_writer=storage_writer(directory / "state", dist.get_rank()))

    def checkpoint_bytes(self) -> int:
        """About what a checkpoint takes on disk, all ranks together: each tensor of the state once, at its whole
        size (a DTensor's numel is the whole tensor's; DCP writes a tensor that DDP replicates once)."""
        return _tensor_bytes(self._checkpoint_state())

    def load(self, directory: Path) -> None:
        state = self._checkpoint_state()
        dcp.load(state, checkpoint_id=str(directory / "state"))  # in place into the tensors of `state`
        if not self.trainable_only:
            set_model_state_dict(self.model, state["model"], options=self._state_options())
        set_optimizer_state_dict(self.model, self.optimizer, state["optim"], options=self._state_options())

    def gather_state_dict(self) -> Optional[dict]:
        """The weights to export on rank 0 (None elsewhere): all of them, or the adapters. Collective."""
        if self.trainable_only:
            state = {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu()
                     for name, p in self._trainable_parameters().items()}
        else:
            state = get_model_state_dict(self.model, options=self._state_options(full_state_dict=True, cpu_offload=True))
        return state if dist.get_rank() == 0 else None
