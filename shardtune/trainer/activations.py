"""Activation checkpointing as train.activation_checkpointing* asks: which decoder layers recompute their forward in
backward (every one, or every k-th), what a checkpointed layer keeps (only its input, or, with the `ops` policy, its
matmul and attention outputs as torchtitan's per-op selective checkpointing does), and whether the kept tensors wait
for backward in pinned host memory (train.activation_offload).

transformers does the wrapping (activation_checkpointing_enable: every_n_layers, offload); this module only picks the
arguments, so every loading path (whole, FSDP2 sharded, ZeRO-3) checkpoints the same way.
"""
import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

POLICIES = ("layer", "ops")

_aten = torch.ops.aten
# The ops whose outputs the `ops` policy keeps: the matmuls (the expensive part of a recompute) and attention; the
# pointwise ops between them (norms, RoPE, SwiGLU, casts) are cheap to recompute and hold most of a layer's bytes.
_KEPT_OPS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default,
             _aten._scaled_dot_product_flash_attention.default,
             _aten._scaled_dot_product_efficient_attention.default,
             _aten._scaled_dot_product_cudnn_attention.default}


def _keep_matmuls(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _ops_policy_contexts():
    return create_selective_checkpoint_contexts(_keep_matmuls)


def enable(model, train_cfg, device_type: str) -> None:
    """Turn on the checkpointing train_cfg asks for on a transformers model (before peft or a strategy wraps it).
    On CPU the activations are in host memory already: activation_offload is then off (offloads() logs it)."""
    if not train_cfg.activation_checkpointing:
        return
    # Non-reentrant checkpointing needs no input that requires grad, so frozen embeddings are fine.
    kwargs = {"use_reentrant": False}
    if train_cfg.activation_checkpointing_policy == "ops":
        kwargs["context_fn"] = _ops_policy_contexts
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs,
                                          every_n_layers=train_cfg.activation_checkpointing_every,
                                          offload=offloads(train_cfg, device_type))


def offloads(train_cfg, device_type: str) -> bool:
    return train_cfg.activation_offload and device_type == "cuda"


def describe(train_cfg, device_type: str) -> str:
    """One phrase for the log and the plan, e.g. 'activation checkpointing: every 2nd layer, inputs kept, in host
    memory'."""
    if not train_cfg.activation_checkpointing:
        return "activation checkpointing: off"
    every = train_cfg.activation_checkpointing_every
    layers = "every layer" if every == 1 else f"every {every}{_ordinal_suffix(every)} layer"
    kept = "matmul and attention outputs kept" if train_cfg.activation_checkpointing_policy == "ops" else "inputs kept"
    where = ""
    if train_cfg.activation_offload:
        where = (", in host memory" if offloads(train_cfg, device_type)
                 else " (offload off: activations are in host memory on CPU)")
    return f"activation checkpointing: {layers}, {kept}{where}"


def _ordinal_suffix(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
