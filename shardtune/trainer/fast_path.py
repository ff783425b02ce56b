"""The fast path: fused kernels (Liger-Kernel), fused LoRA layers and torch.compile per decoder block, as
train.kernels, train.lora_kernel and train.compile ask; `auto` picks each part where the device and the model support
it and says why not elsewhere.

`choose` is pure (the launcher's plan and validation call it too); `apply` changes a built model in place before the
strategy wraps it, so that DDP, FSDP2 and DeepSpeed all wrap the fast modules.
"""
import importlib.util
import logging
from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import ConfigError

log = logging.getLogger(__name__)

KERNEL_CHOICES = ("auto", "liger", "none")
COMPILE_CHOICES = ("auto", "blocks", "none")
LORA_KERNEL_CHOICES = ("auto", "fused", "peft")
# Architectures whose Liger patch (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy over lm_head) is used here.
LIGER_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
LIGER_KERNELS = ("rms_norm", "rope", "swiglu", "fused linear cross-entropy")
# train.compile=auto compiles the blocks of every method, checkpointed or not, of the architectures below. Measured on
# an H100 on 2026-12-06 (docs/benchmarks.md): 1B LoRA 1.28x over eager, 1B full fine-tuning under FSDP2 1.06x (44.0k
# against 41.5k tokens/s, both with Liger's loss); with checkpointed blocks (2026-12-07), 8B LoRA 11.6k-11.8k and 8B
# QLoRA 10.5k tokens/s against HF + Liger's 7.4k-7.6k and 5.4k. No graph break, no recompile; the
# loss curve kept on the GPU for full, LoRA and QLoRA under DDP, FSDP2 and ZeRO-3 (tests/gpu/test_gpu_fast_path.py),
# and checkpointed and 4-bit blocks give the eager losses on CPU workers (tests/dist/test_compile.py).


@dataclass(frozen=True)
class FastPath:
    liger: bool
    compile_blocks: bool
    fused_lora: bool = False
    why_not: Tuple[str, ...] = ()  # why a part `auto` would pick is off

    @property
    def fused_loss(self) -> bool:
        """Whether the loss is computed from the hidden states without materialising the logits."""
        return self.liger

    @property
    def liger_kernels(self) -> Tuple[str, ...]:
        """Liger's kernels in use. In compiled blocks the compiler fuses the norms, RoPE and SwiGLU itself, and
        Liger's own autograd functions there would only hide them from it: then only the loss is Liger's."""
        if not self.liger:
            return ()
        return LIGER_KERNELS[-1:] if self.compile_blocks else LIGER_KERNELS

    def describe(self) -> str:
        kernels = f"liger ({', '.join(self.liger_kernels)})" if self.liger else "none"
        text = f"kernels: {kernels}; compile: {'per block' if self.compile_blocks else 'none'}"
        if self.fused_lora:
            text += "; lora: fused"
        return text + (f" ({'; '.join(self.why_not)})" if self.why_not else "")


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def choose(train_cfg, method_cfg, device_type: str, model_type: str) -> FastPath:
    """The parts of the fast path this run uses. A part asked for by name that this device or model cannot have is
    refused (ConfigError); `auto` turns such a part off and records why."""
    why_not = []
    liger = train_cfg.kernels == "liger"
    if train_cfg.kernels != "none":
        missing = ("needs a CUDA GPU" if device_type != "cuda"
                   else f"not used with model_type {model_type!r} (only {', '.join(LIGER_ARCHITECTURES)})"
                   if model_type not in LIGER_ARCHITECTURES
                   else "liger-kernel is not installed (pip install liger-kernel)" if not liger_installed()
                   else None)
        if missing and liger:
            raise ConfigError("train.kernels", f"liger {missing}")
        liger = missing is None
        if missing:
            why_not.append(f"liger kernels off: {missing}")
    compile_blocks = train_cfg.compile == "blocks"
    if train_cfg.compile == "auto":
        unmeasured = ("needs a CUDA GPU" if device_type != "cuda"
                      # Llama-like blocks (the GPU tests compile Llama's); others only when asked for (blocks).
                      else f"auto compiles {', '.join(LIGER_ARCHITECTURES)} blocks only"
                      if model_type not in LIGER_ARCHITECTURES
                      else None)
        compile_blocks = unmeasured is None
        if unmeasured:
            why_not.append(f"compile off: {unmeasured}")
    fused_lora = _choose_lora_kernel(train_cfg.lora_kernel, method_cfg, device_type, why_not)
    return FastPath(liger, compile_blocks, fused_lora, tuple(why_not))


def _choose_lora_kernel(asked: str, method_cfg, device_type: str, why_not: list) -> bool:
    if asked == "peft" or method_cfg.name == "full":
        return False
    missing = ("not for QLoRA (its 4-bit layers keep peft's forward)" if method_cfg.name == "qlora"
               else "not for DoRA (method.use_dora)" if method_cfg.use_dora
               else "auto fuses on CUDA only" if asked == "auto" and device_type != "cuda"
               else None)
    if missing and asked == "fused":
        raise ConfigError("train.lora_kernel", f"fused: {missing}")
    if missing:
        why_not.append(f"fused LoRA off: {missing}")
    return missing is None


def apply(model, fast_path: FastPath, decoder_layers, compile_block_hooks: bool = True) -> None:
    """Patch `model` (transformers or peft) in place: Liger's modules and loss, fused LoRA layers, then compile each
    decoder block (with the strategy's hooks on it, or only its forward: Strategy.compile_block_hooks)."""
    if fast_path.liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        in_blocks = "rms_norm" in fast_path.liger_kernels
        _apply_liger_kernel_to_instance(model=base, rope=in_blocks, rms_norm=in_blocks, swiglu=in_blocks,
                                        cross_entropy=False, fused_linear_cross_entropy=True)
    if fast_path.fused_lora:
        from . import fused_lora
        fused, layers = fused_lora.fuse(model)
        if fused < layers:  # a layer peft adapts that is not a plain nn.Linear (a 1-D convolution, say)
            log.warning("fused LoRA: %d of %d LoRA layers; the others keep peft's forward", fused, layers)
    if fast_path.compile_blocks:
        import torch._dynamo
        layers = decoder_layers(model)
        # The blocks share one compiled graph; allow a recompile per block where guards still tell them apart,
        # rather than a silent fall-back to eager after the default eight.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, len(layers) + 8)
        # Under activation checkpointing the compiler traces the checkpointed forward as one operator, which may not
        # change state outside it. transformers' hub-kernel routing (the `kernels` package) sets a context variable
        # around a layer's forward and restores it: nothing a recompute in backward needs to repeat. Without this the
        # whole checkpointed block falls back to eager (a graph break the compile report shows).
        torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
        for layer in layers:
            if compile_block_hooks:
                layer.compile()  # in place: the strategy's hooks (FSDP2) stay on the module, traced with it
            else:
                layer.forward = torch.compile(layer.forward)  # the hooks around it (ZeRO-3's) run eagerly


def loss_kwargs(fast_path: FastPath) -> dict:
    """Extra forward arguments of an evaluation pass: the fused loss in eval mode too, not logits."""
    return {"skip_logits": True} if fast_path.fused_loss else {}


def frames_compiled() -> int:
    from torch._dynamo.utils import counters
    return counters["frames"]["ok"]


def compile_report(frames_at_first_step: Optional[int] = None) -> str:
    """What torch.compile did so far, for the log: graphs compiled, graph breaks with their reasons, and (given the
    frames compiled by the end of the first step) the recompiles since: evaluation's first pass (eval mode is a guard)
    is one per block; more say that some input keeps changing shape or type."""
    from torch._dynamo.utils import counters
    breaks = counters["graph_break"]
    text = (f"{counters['stats']['unique_graphs']} graphs compiled from {frames_compiled()} frames, "
            f"{sum(breaks.values())} graph breaks")
    if breaks:
        text += ": " + "; ".join(f"{reason} (x{count})" for reason, count in breaks.most_common(3))
    if frames_at_first_step is not None:
        text += f"; {frames_compiled() - frames_at_first_step} recompiles after the first step"
    return text
