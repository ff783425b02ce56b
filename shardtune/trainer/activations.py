"""Activation checkpointing as train.activation_checkpointing* asks: which decoder layers recompute their forward in
backward (every one, or every k-th), what a checkpointed layer keeps (only its input, or, with the `ops` policy, its
matmul and attention outputs as torchtitan's per-op selective checkpointing does), and whether the kept tensors wait
for backward in pinned host memory (train.activation_offload).

transformers does the wrapping (activation_checkpointing_enable with every_n_layers; for older releases this module
wraps the layers' forward as the newer ones do: inside a compiled block), and this module the offload (around a
compiled block); it picks the arguments, so every loading path (whole, FSDP2 sharded, ZeRO-3) checkpoints the same
way.
"""
import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from . import fast_path

POLICIES = ("layer", "ops")

_aten = torch.ops.aten
# The ops whose outputs the `ops` policy keeps: the matmuls (the expensive part of a recompute) and attention; the
# pointwise ops between them (norms, RoPE, SwiGLU, casts) are cheap to recompute and hold most of a layer's bytes.
_KEPT_OPS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default,
             _aten._scaled_dot_product_flash_attention.default,
             _aten._scaled_dot_product_efficient_attention.default,
             _aten._scaled_dot_product_cudnn_attention.default}


# The `layer` policy in compiled blocks keeps a matmul's output when it is under this fraction of its input: LoRA's
# x·Aᵀ (rank 16 of 4096 is 1/256), whose recompute would read the whole input again for a few columns. Grouped-query
# key and value projections stay out (1/8 of a 70B's hidden size, 1/16 of a 405B's). Eager blocks recompute it: a
# selective policy runs Python for every operator there, which a compiled graph pays once, when it is traced.
SMALL_PRODUCT = 1 / 16


def _keep_matmuls(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _keep_small_products(ctx, op, *args, **kwargs):
    if op is _aten.mm.default and args[1].shape[1] < SMALL_PRODUCT * args[0].shape[1]:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _ops_policy_contexts():
    return create_selective_checkpoint_contexts(_keep_matmuls)


def _small_products_contexts():
    return create_selective_checkpoint_contexts(_keep_small_products)


def enable(model, train_cfg, device_type: str, compiled: bool = False) -> None:
    """Turn on the checkpointing train_cfg asks for on a transformers model (before peft or a strategy wraps it);
    `compiled`: its decoder blocks will be compiled. On CPU the activations are in host memory already:
    activation_offload is then off (offloads() logs it)."""
    if not train_cfg.activation_checkpointing:
        return
    # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings are fine.
    kwargs = {"use_reentrant": False}
    if train_cfg.activation_checkpointing_policy == "ops":
        kwargs["context_fn"] = _ops_policy_contexts
    elif compiled:
        kwargs["context_fn"] = _small_products_contexts
    every = train_cfg.activation_checkpointing_every
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every)
    else:
        _enable_with_older_transformers(model, kwargs, every)
    if offloads(train_cfg, device_type):
        _offload_what_checkpointed_layers_keep(model, every)


def _checkpointed_layers(model, every: int) -> list:
    """Every k-th decoder layer from the first, as transformers' every_n_layers picks them."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)][::every]


def _enable_with_older_transformers(model, kwargs: dict, every: int) -> None:
    """transformers releases without activation_checkpointing_enable (5.17 among them) checkpoint a layer's __call__,
    around a compiled block: the recompute then replays the whole compiled forward, matmuls backward never reads
    included, with a selective policy applied in Python operator by operator. The newer ones checkpoint the layer's
    forward, inside the compiled block, where the compiler plans forward, recompute and backward as one graph (as
    torchtitan compiles its checkpointed blocks). Do as the newer ones; the layers' own flag stays off, or __call__
    would checkpoint them a second time."""
    for layer in _checkpointed_layers(model, every):
        layer.forward = _checkpointed_forward(layer, layer.forward, functools.partial(checkpoint, **kwargs))


def _checkpointed_forward(layer, forward, checkpoint_func):
    @functools.wraps(forward)
    def forward_with_checkpointing(*args, **kwargs):
        if layer.training and torch.is_grad_enabled():  # without a backward there is nothing to recompute for
            return checkpoint_func(functools.partial(forward, **kwargs), *args)
        return forward(*args, **kwargs)
    return forward_with_checkpointing


def _offload_what_checkpointed_layers_keep(model, every: int) -> None:
    """What each checkpointed layer keeps for backward waits in pinned host memory, its weights excepted. The hooks
    go around the layer's call, not inside its forward as transformers' own offload puts them: the compiler does not
    trace saved-tensor hooks, and a compiled block would fall back to eager (a graph break). Around a compiled block
    the tensors it keeps include its weights, which stay where they are. Python looks __call__ up on the class, so
    each such layer's class becomes a subclass with that __call__ (FSDP2 subclasses it again, keeping it)."""
    subclasses = {}
    for layer in _checkpointed_layers(model, every):
        cls = type(layer)
        if cls not in subclasses:
            subclasses[cls] = type(cls.__name__, (cls,), {"__call__": _call_keeping_in_host_memory(cls.__call__)})
        layer.__class__ = subclasses[cls]


def _call_keeping_in_host_memory(call):
    @functools.wraps(call)
    def call_keeping_in_host_memory(self, *args, **kwargs):
        weights = None  # the storages of the layer's weights as its forward sees them (gathered under FSDP2)

        def pack(tensor):
            nonlocal weights
            if weights is None:
                weights = {tensor.untyped_storage().data_ptr() for tensor in _weights(self)}
            if tensor.untyped_storage().data_ptr() not in weights:
                in_host_memory = _to_host_memory(tensor)
                if in_host_memory is not None:
                    return tensor.device, in_host_memory
            return None, tensor  # stays where it is

        def unpack(packed):
            device, tensor = packed
            return tensor if device is None else tensor.to(device, non_blocking=True)

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            return call(self, *args, **kwargs)
    return call_keeping_in_host_memory


def _weights(layer):
    """The layer's parameters, and the tensors of the quantisation states of 4-bit ones (bitsandbytes' absmax and
    code, nested for double quantisation): what a compiled block keeps for backward without computing it."""
    for param in layer.parameters():
        yield param
        state = getattr(param, "quant_state", None)
        while state is not None:
            yield from (value for value in vars(state).values() if isinstance(value, torch.Tensor))
            state = getattr(state, "state2", None)


def _to_host_memory(tensor):
    """A copy in host memory with the tensor's strides, which the copy back keeps: a compiled block's backward checks
    the layout of what it saved (the attention output is transposed). None where a copy cannot have them (a view that
    is not dense, as a slice): that tensor stays put. A GPU tensor's copy is pinned and queued on its stream, so the
    host goes on launching the forward (+5.5% on 8B LoRA against waiting for each copy): the copy back is queued on
    the same stream, after it, and the allocators reuse neither the GPU memory nor the pinned buffer before the copies
    that read them have run."""
    in_host_memory = torch.empty_like(tensor, device="cpu", pin_memory=tensor.is_cuda)
    if in_host_memory.stride() != tensor.stride():
        return None
    return in_host_memory.copy_(tensor, non_blocking=True)


def enable_for_run(model, cfg, device_type: str) -> None:
    """enable() for this run (each loading path calls it), with the policy of compiled blocks where its fast path will
    compile them."""
    compiled = fast_path.choose(cfg.train, cfg.method, device_type, model.config.model_type).compile_blocks
    enable(model, cfg.train, device_type, compiled)


def offloads(train_cfg, device_type: str) -> bool:
    return train_cfg.activation_offload and device_type == "cuda"


def describe(train_cfg, device_type: str, compiled: bool = False) -> str:
    """One phrase for the log and the plan, e.g. 'activation checkpointing: every 2nd layer, inputs kept, in host
    memory'."""
    if not train_cfg.activation_checkpointing:
        return "activation checkpointing: off"
    every = train_cfg.activation_checkpointing_every
    layers = "every layer" if every == 1 else f"every {every}{_ordinal_suffix(every)} layer"
    kept = ("matmul and attention outputs kept" if train_cfg.activation_checkpointing_policy == "ops"
            else "inputs and matmul outputs under 1/16 of their input (LoRA's x·Aᵀ) kept" if compiled
            else "inputs kept")
    where = ""
    if train_cfg.activation_offload:
        where = (", in host memory" if offloads(train_cfg, device_type)
                 else " (offload off: activations are in host memory on CPU)")
    return f"activation checkpointing: {layers}, {kept}{where}"


def _ordinal_suffix(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
