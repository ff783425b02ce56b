"""LoRA layers as one operator each (train.lora_kernel=fused): y = x Wᵀ + b + s (x Aᵀ) Bᵀ, where the base matmul
adds its product onto the adapters' in its epilogue (cuBLAS addmm, beta=1) rather than a kernel of its own adding the
two, and in backward the input gradient dx = dy W + s (dy B) A likewise.

Why: peft materialises the adapters' product as a tensor and adds it to the base output. Under torch.compile the add
lands in the next pointwise kernel (SwiGLU, RoPE, the residual add), which then reads both tensors and writes their
sum too where backward keeps it, in forward, in the recompute of checkpointed blocks and in backward. Measured on an
H100 (benchmarks/lora_block.py, Llama-3 8B shapes, micro batch 2 x 2048, checkpointed compiled blocks): peft's LoRA
costs 1.8 ms per layer and step over the frozen base; SwiGLU's forward kernel alone went from 111 to 273 us. The
compiler splits a plain addmm whose users are pointwise back into a matmul and an add, so the matmuls live in custom
operators here. (The fused layers' own speed: docs/benchmarks.md.)

Only plain layers are fused: peft's `lora.Linear` over an `nn.Linear` with one adapter, without DoRA and not merged;
the others keep peft's forward. The base weight and bias must be frozen (they are, under LoRA).
"""
import types
from typing import Optional, Tuple

import torch
from torch import Tensor


@torch.library.custom_op("shardtune::lora_linear", mutates_args=())
def lora_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], lora_xa: Tensor, lora_b: Tensor,
                scale: float) -> Tensor:
    """x Wᵀ + b + scale lora_xa Bᵀ for 2-D x. The small product first, then the base matmul adds onto it (beta=1):
    the base matmul is compute-bound, so reading the product in its epilogue hides behind its math, where adding
    onto the base output would be a memory-bound pass of its own."""
    scaled_xa = lora_xa * scale  # tokens x rank
    out = scaled_xa @ lora_b.t() if bias is None else torch.addmm(bias, scaled_xa, lora_b.t())
    return out.addmm_(x, weight.t())


@lora_linear.register_fake
def _(x, weight, bias, lora_xa, lora_b, scale):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("shardtune::lora_linear_input_grad", mutates_args=())
def lora_linear_input_grad(grad: Tensor, weight: Tensor, grad_xa: Tensor, lora_a: Tensor) -> Tensor:
    """dy W + grad_xa A, the input's gradient when the adapters read the same input (grad_xa = s dy B); dy W adds
    onto the small product, as in lora_linear."""
    return (grad_xa @ lora_a).addmm_(grad, weight)


@lora_linear_input_grad.register_fake
def _(grad, weight, grad_xa, lora_a):
    return grad.new_empty(grad.shape[0], weight.shape[1])


class LoraLinear(torch.autograd.Function):
    """y = x Wᵀ + b + s (lora_x Aᵀ) Bᵀ over a frozen W and b; lora_x is x after the adapters' dropout, or None
    where they read x itself.

    lora_x Aᵀ is an operation of its own, not part of the custom operator: what backward needs (lora_x, lora_x Aᵀ
    and the weights) can then be recomputed in a checkpointed block without the base matmul, which the last layer
    of a block (down_proj) would otherwise repeat for nothing."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_x, lora_a, lora_b, scale):
        # lora_x None: the adapters read x itself (the compiler cannot trace one tensor passed twice)
        ctx.scale, ctx.shared_input = scale, lora_x is None
        lora_x = x if lora_x is None else lora_x
        lora_xa = lora_x @ lora_a.t()
        ctx.save_for_backward(weight, lora_x, lora_a, lora_b, lora_xa)
        return lora_linear(x, weight, bias, lora_xa, lora_b, scale)

    @staticmethod
    def backward(ctx, grad):
        weight, lora_x, lora_a, lora_b, lora_xa = ctx.saved_tensors
        grad_xa = (grad @ lora_b).mul_(ctx.scale)  # s dy B: tokens x rank
        if ctx.shared_input:
            grad_x, grad_lora_x = lora_linear_input_grad(grad, weight, grad_xa, lora_a), None
        else:  # dropout between: its own gradient, which autograd carries back through the dropout
            grad_x, grad_lora_x = grad @ weight, grad_xa @ lora_a
        grad_a = grad_xa.t() @ lora_x
        grad_b = (grad.t() @ lora_xa).mul_(ctx.scale)
        return grad_x, None, None, grad_lora_x, grad_a, grad_b, None


def fusable(layer) -> bool:
    """Whether this peft LoRA layer is a plain one the fused operator computes exactly."""
    from peft.tuners.lora.layer import Linear
    base = layer.get_base_layer()
    return (type(layer) is Linear and type(base) is torch.nn.Linear and len(layer.lora_A) == 1
            and not layer.lora_variant and not layer.merged and not base.weight.requires_grad
            and (base.bias is None or not base.bias.requires_grad)
            and all(adapter.bias is None for adapter in (*layer.lora_A.values(), *layer.lora_B.values())))


def fuse(model) -> Tuple[int, int]:
    """Give each plain LoRA layer of `model` the fused forward: (the number fused, the number of LoRA layers)."""
    from peft.tuners.lora import LoraLayer
    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    fused = [layer for layer in layers if fusable(layer)]
    for layer in fused:
        layer.forward = types.MethodType(_fused_forward, layer)
    return len(fused), len(layers)


def _fused_forward(layer, x: Tensor, *args, **kwargs) -> Tensor:
    """The fused operator while the layer's one adapter is active; peft's forward otherwise (adapters disabled or
    merged, mixed-batch adapter names)."""
    adapter = next(iter(layer.lora_A))
    if args or kwargs or layer.disable_adapters or layer.merged or list(layer.active_adapters) != [adapter]:
        return type(layer).forward(layer, x, *args, **kwargs)
    base = layer.get_base_layer()
    # Autocast does not see inside custom operators: cast here as it would, to its dtype.
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    x2 = x.reshape(-1, x.shape[-1]).to(dtype)
    bias = None if base.bias is None else base.bias.to(dtype)
    lora_x = layer.lora_dropout[adapter](x2)
    out = LoraLinear.apply(x2, base.weight.to(dtype), bias, None if lora_x is x2 else lora_x,
                           layer.lora_A[adapter].weight.to(dtype), layer.lora_B[adapter].weight.to(dtype),
                           float(layer.scaling[adapter]))
    return out.reshape(*x.shape[:-1], out.shape[-1])
