"""Building the model a method asks for: full weights, LoRA adapters (peft), or LoRA over a
bitsandbytes-quantized base (QLoRA, 4-bit NF4/FP4 or 8-bit LLM.int8).

A randomly initialised model (model.init=random) is written once into the run directory and then
loaded like any pretrained one: every rank and every strategy starts from the same weights, quantization
works the same way, and a resumed run finds its frozen base again.
"""
import math
import zlib
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

from ..attention import implementation as attention_implementation
from ..cluster.shared_fs import write_once_per_filesystem
from ..precision import DTYPES
from ..run_dir import COMPLETE_MARKER, RANDOM_INIT_DIR, is_complete, write_directory_atomically
from . import activations


def decoder_layers(model: torch.nn.Module) -> list:
    """The transformer blocks: modules whose class transformers lists as never to be split."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    block_names = set(getattr(base, "_no_split_modules", None) or ())
    # By class or base class: FSDP2's fully_shard gives a sharded layer a subclass of its own (FSDPLlamaDecoderLayer).
    layers = [m for m in model.modules() if any(cls.__name__ in block_names for cls in type(m).__mro__)]
    if not layers:
        raise ValueError(f"found no decoder layers ({sorted(block_names) or 'no _no_split_modules'}) in "
                         f"{type(base).__name__}; this architecture cannot be sharded per layer")
    return layers


def materialize_random_init(cfg, dtype: torch.dtype) -> str:
    """Write a seeded random model for cfg.model.architecture into the run directory once; return its path.

    Collective (torch.distributed must be up): one rank writes per filesystem, so several nodes sharing
    the run directory write it once; the others wait.
    """
    path = Path(cfg.output_dir, RANDOM_INIT_DIR)

    def write(staging: Path) -> None:
        config = AutoConfig.for_model(**cfg.model.architecture)
        torch.manual_seed(cfg.train.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.save_pretrained(staging)
        (staging / COMPLETE_MARKER).touch()

    def written() -> bool:
        return is_complete(path)

    write_once_per_filesystem(written, lambda: write_directory_atomically(path, write, written))
    return str(path)


def quantization_config(method_cfg, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    if method_cfg.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    storage = compute_dtype if method_cfg.quant_storage_dtype == "auto" else DTYPES[method_cfg.quant_storage_dtype]
    compute = compute_dtype if method_cfg.compute_dtype == "auto" else DTYPES[method_cfg.compute_dtype]
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=method_cfg.quant_type,
                              bnb_4bit_use_double_quant=method_cfg.double_quant,
                              bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=storage)


def load_dtype(cfg, compute_dtype: torch.dtype) -> torch.dtype:
    # Full fine-tuning keeps fp32 weights (masters); the strategy casts for compute. A frozen LoRA
    # base only ever computes, so it is loaded straight in the compute dtype.
    return torch.float32 if cfg.method.name == "full" else compute_dtype


def model_source(cfg, compute_dtype: torch.dtype) -> str:
    """Where the weights come from: the model's own, or a seeded random model written once into the run directory
    (collective: one rank writes it, whole, while the others wait)."""
    if cfg.model.init == "random":
        return materialize_random_init(cfg, load_dtype(cfg, compute_dtype))
    return cfg.model.name_or_path


def load_base_model(cfg, source: str, device: torch.device, compute_dtype: torch.dtype) -> torch.nn.Module:
    """The transformers model the method starts from, without adapters: full weights, or the frozen base
    (quantized by bitsandbytes for QLoRA, already on `device`). Export dequantizes it before adding adapters."""
    method = cfg.method.name
    kwargs = dict(dtype=load_dtype(cfg, compute_dtype), attn_implementation=attention_implementation(cfg, device.type),
                  trust_remote_code=cfg.model.trust_remote_code)
    if cfg.model.init != "random":
        kwargs["revision"] = cfg.model.revision
    if method == "qlora":
        kwargs["quantization_config"] = quantization_config(cfg.method, compute_dtype)
        kwargs["device_map"] = {"": device}  # bitsandbytes quantizes while loading onto the device
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    model.config.use_cache = False  # the KV cache only serves generation
    disable_cpu_repacking(model)
    return model


def disable_cpu_repacking(model: torch.nn.Module) -> None:
    for module in model.modules():
        # bitsandbytes repacks 4-bit weights in place for a faster CPU inference kernel the first time
        # a module runs in eval mode; evaluation between training steps must see the training layout.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def build_model(cfg, source: str, device: torch.device, compute_dtype: torch.dtype) -> torch.nn.Module:
    """The model ready for a strategy to wrap: on `device`, with only the trainable weights requiring grad."""
    method = cfg.method.name
    model = load_base_model(cfg, source, device, compute_dtype)
    activations.enable_for_run(model, cfg, device.type)
    if method in ("lora", "qlora"):
        model = add_lora(model, cfg.method)
        init_adapters(model, cfg.train.seed)
    if method != "qlora":  # bitsandbytes put the quantized base on the device already
        model.to(device)
    return model


def add_lora(model, method_cfg):
    from peft import LoraConfig, get_peft_model
    targets = list(method_cfg.target_modules)
    lora = LoraConfig(r=method_cfg.rank, lora_alpha=method_cfg.alpha, lora_dropout=method_cfg.dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else targets,
                      use_dora=method_cfg.use_dora, task_type="CAUSAL_LM")
    # Adapters are created in fp32 (peft's default) even over a 16-bit base: they are the weights
    # the optimizer updates, and small updates vanish in bf16.
    return get_peft_model(model, lora)


def lora_layers(model):
    """(name, layer) of every peft LoRA layer."""
    from peft.tuners.lora import LoraLayer
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def keep_adapter_inputs_as_they_come(model) -> None:
    """Stop peft from casting each LoRA layer's input to its adapters' dtype (fp32) in forward: for training under
    autocast, which casts them back to the compute dtype for the matmul. The values are the same, but every adapter
    then keeps a copy of its input for backward: the query, key and value adapters three of one tensor. Without the
    cast they share it (peft skips the cast under autocast for 4-bit layers already)."""
    for _, layer in lora_layers(model):
        layer.cast_input_dtype_enabled = False


def init_adapters(model, seed: int) -> None:
    """Give every LoRA adapter its initial weights as peft does (A: Kaiming-uniform, B: zero), drawn from a
    generator seeded by the run's seed and the layer's name.

    Every strategy calls this, and the values depend on nothing else: not on the device, on the order layers
    were built in, or on whether the model was built on the meta device and sharded first (FSDP), so all
    strategies start from the same adapters.
    """
    for name, layer in lora_layers(model):
        for adapter, lora_a in layer.lora_A.items():
            generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{name}.{adapter}".encode()))
            weight = torch.empty(lora_a.weight.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
            copy_full_tensor(lora_a.weight, weight)
            copy_full_tensor(layer.lora_B[adapter].weight, torch.zeros(layer.lora_B[adapter].weight.shape))
            for bias in (lora_a.bias, layer.lora_B[adapter].bias):
                if bias is not None:
                    copy_full_tensor(bias, torch.zeros(bias.shape))


def dora_magnitudes(model) -> None:
    """DoRA's magnitude vectors, once the base weights are loaded: the norm of each output row of the base
    weight (B is zero, so the adapted weight is the base), as peft computes them at creation. Under FSDP the
    magnitude and the weight are split by rows alike, so each rank computes its own rows."""
    from torch.distributed.tensor import DTensor  # here: the launcher imports this module for decoder_layers
    for _, layer in lora_layers(model):
        for adapter, magnitude in getattr(layer, "lora_magnitude_vector", {}).items():
            weight = layer.get_base_layer().weight
            local = weight.to_local() if isinstance(weight, DTensor) else weight
            target = magnitude.weight.to_local() if isinstance(magnitude.weight, DTensor) else magnitude.weight
            with torch.no_grad():
                target.copy_(torch.linalg.norm(local.float(), dim=1))


def copy_full_tensor(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole tensor that every rank holds into `param`, or into this rank's shard of it (a DTensor)."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    with torch.no_grad():
        if isinstance(param, DTensor):
            # src_data_rank=None: each rank takes its own slice of its own copy, without communicating.
            full = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
            param = param.to_local()
        param.copy_(full)


def logical_numel(param: torch.nn.Parameter) -> int:
    """Parameter count as the model sees it: ZeRO-3 partitions and 4-bit packing hide the real shape."""
    if hasattr(param, "ds_numel"):
        return param.ds_numel
    quant_state = getattr(param, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None else param.numel()


def count_parameters(model) -> tuple:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(map(logical_numel, params)), sum(logical_numel(p) for p in params if p.requires_grad)
