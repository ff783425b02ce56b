"""16-bit weights for compute, fp32 masters for the step: a full fine-tune on one GPU without a wrapper.

On one rank DDP has nothing to all-reduce, and its autocast casts every weight at every forward (and again at every
recompute), keeps fp32 activations between layers and hands Liger's fused loss an fp32 head. Here every parameter
keeps two tensors instead and shows one of them as its `.data`:

- from a forward until the step, the 16-bit copy: the model computes in 16-bit without autocast, as under FSDP2's
  mixed precision, and each parameter's 16-bit gradient is added into an fp32 gradient as soon as it is ready;
- at the step, and whenever the state is read or written (checkpoints, export), the fp32 master with its fp32
  gradient: clipping, AdamW, GradScaler and torch.distributed.checkpoint see the same Parameter objects in fp32 as
  they do under DDP, so checkpoints are interchangeable between the two.

After the step the copies are refreshed from the masters in one multi-tensor copy.
"""
import torch


def applies(strategy_kind: str, method: str, world_size: int, precision: str) -> bool:
    """Whether a run trains this way: a full fine-tune in 16-bit on DDP with one rank. (Several ranks keep DDP's
    all-reduce overlapped with backward, over fp32 parameters under autocast.)"""
    return strategy_kind == "ddp" and method == "full" and world_size == 1 and precision in ("bf16", "fp16")


class MasterWeights:
    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        self.params = list(model.parameters())  # tied weights once
        self.masters = [p.data for p in self.params]  # as loaded: fp32 (model.load_dtype)
        self.copies = [master.to(dtype) for master in self.masters]
        self.grads = [None] * len(self.params)  # fp32, summed over the micro-batches of a step
        for index, param in enumerate(self.params):
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(self._accumulator(index))
        self.computing = False

    def _accumulator(self, index: int):
        def accumulate(param: torch.nn.Parameter) -> None:
            # Added in fp32 at once and the 16-bit gradient dropped: only one parameter's 16-bit gradient is alive
            # at a time, and accumulation over micro-batches does not round to 16 bits.
            if self.grads[index] is None:
                self.grads[index] = param.grad.float()
            else:
                self.grads[index].add_(param.grad)
            param.grad = None
        return accumulate

    def compute(self) -> None:
        """Show the 16-bit copies (before a forward)."""
        if not self.computing:
            for param, copy in zip(self.params, self.copies):
                param.grad = None  # the fp32 gradient stays in self.grads
                param.data = copy
            self.computing = True

    def show_masters(self) -> None:
        """Show the fp32 masters, with the gradients summed since the last step (before the step, a checkpoint, an
        export)."""
        if self.computing:
            for param, master, grad in zip(self.params, self.masters, self.grads):
                param.data = master
                param.grad = grad
            self.computing = False

    def copies_bytes(self) -> int:
        return sum(copy.numel() * copy.element_size() for copy in self.copies)

    def refresh_copies(self) -> None:
        """The 16-bit copies from the masters (after the optimizer's step, or a checkpoint's load)."""
        torch._foreach_copy_(self.copies, self.masters)

    def drop_grads(self) -> None:
        """Forget the gradients summed so far (after a step; the micro batch trial's) and show the masters."""
        self.grads = [None] * len(self.params)
        self.show_masters()
        for param in self.params:
            param.grad = None
