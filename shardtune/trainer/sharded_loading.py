"""Building a model under FSDP2 without a whole copy of it on any rank.

The model is built on the meta device (shapes, no storage), LoRA adapters are added, and the strategy shards
it with `fully_shard`. Only then is memory allocated, each rank for its own shards, which it fills itself:

- full-precision and 16-bit weights: each rank reads only its slices of the safetensors files
  (torch.distributed.checkpoint's HuggingFaceStorageReader), so a node holds about one copy of the model in
  all, however many ranks it runs;
- QLoRA's 4-bit base: each rank reads one linear weight at a time, quantizes it on its device exactly as
  transformers does when it loads a model with bitsandbytes (same Params4bit, same arguments), and keeps its
  shard of the packed storage. The quantization state (absmax, about 1/64 of the weight) stays whole on the
  Linear4bit module, where bitsandbytes finds it again after FSDP all-gathers the packed weight;
- adapters: `init_adapters`, as under every strategy.
"""
import os
from pathlib import Path
from typing import Callable, Dict

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader
from transformers import AutoConfig, AutoModelForCausalLM

from . import activations
from ..attention import implementation as attention_implementation
from .model import (add_lora, copy_full_tensor, disable_cpu_repacking, dora_magnitudes, init_adapters, load_dtype,
                    quantization_config)


def build_sharded_model(cfg, source: str, device: torch.device, compute_dtype: torch.dtype,
                        shard: Callable[[torch.nn.Module], None], param_device: torch.device) -> torch.nn.Module:
    """The model of `cfg.method`, sharded by `shard` (fully_shard per layer and root), its weights loaded.

    param_device: where the sharded parameters live (the GPU, or the host under cpu_offload); buffers and the
    quantization state go to `device`, where the forward runs.
    """
    weights_dir = local_weights_dir(cfg.model, source)
    model = build_on_meta(cfg, weights_dir, compute_dtype, device)
    buffers = dict(model.named_buffers())  # real tensors (rotary frequencies): built outside the meta device
    base_keys = {name for name, _ in model.named_parameters()}  # the checkpoint's names, before adapters
    quantized = replace_linear_with_4bit(model, cfg.method, compute_dtype) if cfg.method.name == "qlora" else {}
    activations.enable_for_run(model, cfg, device.type)
    if cfg.method.name in ("lora", "qlora"):
        model = add_lora(model, cfg.method)
    shard(model)
    model.to_empty(device=param_device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # the names read above
    for name, value in buffers.items():
        owner, _, attribute = name.rpartition(".")
        setattr(base.get_submodule(owner), attribute, value.to(device))
    read_own_slices(base, base_keys, quantized, weights_dir)
    quantize_own_shards(quantized, weights_dir, device, load_dtype(cfg, compute_dtype))
    if cfg.method.name in ("lora", "qlora"):
        init_adapters(model, cfg.train.seed)
        dora_magnitudes(model)
    return model


def local_weights_dir(model_cfg, source: str) -> Path:
    """The directory holding the safetensors files: the model directory, or the hub snapshot (downloaded by
    each node's first rank, then found in the cache by the others)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download
    patterns = ["*.json", "*.safetensors"]
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        snapshot_download(source, revision=model_cfg.revision, allow_patterns=patterns)
    dist.barrier()
    return Path(snapshot_download(source, revision=model_cfg.revision, allow_patterns=patterns, local_files_only=True))


def build_on_meta(cfg, weights_dir: Path, compute_dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The transformers model with its parameters on the meta device and its buffers real."""
    from accelerate import init_empty_weights
    config = AutoConfig.from_pretrained(weights_dir, trust_remote_code=cfg.model.trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=load_dtype(cfg, compute_dtype),
                                                 attn_implementation=attention_implementation(cfg, device.type),
                                                 trust_remote_code=cfg.model.trust_remote_code)
    model.tie_weights()  # init_empty_weights swaps each parameter for a meta one, which unties tied embeddings
    model.config.use_cache = False  # the KV cache only serves generation
    return model


def replace_linear_with_4bit(model, method_cfg, compute_dtype: torch.dtype) -> Dict[str, tuple]:
    """Swap the linear layers transformers would quantize for bitsandbytes' Linear4bit, still on the meta device,
    with a weight of the packed shape FSDP will shard. Returns {module name: (Linear4bit, Params4bit arguments)}:
    the module itself, since peft wraps it under another name."""
    from bitsandbytes.nn import Linear4bit, Params4bit
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.base import HfQuantizer
    bnb_config = quantization_config(method_cfg, compute_dtype)
    # The same modules transformers leaves unquantized when it loads the model for DDP (the head, tied weights,
    # the architecture's fp32 modules), so both strategies train the same model.
    skip = HfQuantizer.get_modules_to_not_convert(model, bnb_config.llm_int8_skip_modules,
                                                  getattr(model, "_keep_in_fp32_modules", None))
    replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=bnb_config)
    arguments = {}
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit):
            continue
        weight = module.weight
        quantize_arguments = dict(blocksize=weight.blocksize, compress_statistics=weight.compress_statistics,
                                  quant_type=weight.quant_type, quant_storage=weight.quant_storage)
        arguments[name] = (module, quantize_arguments)
        storage = weight.quant_storage
        # bitsandbytes packs two 4-bit values per byte into a column of its storage dtype.
        packed_rows = (weight.numel() + 1) // (storage.itemsize * 2)
        module.weight = Params4bit(torch.empty(packed_rows, 1, dtype=storage, device="meta"), requires_grad=False,
                                   bnb_quantized=True, module=module, **quantize_arguments)
    disable_cpu_repacking(model)
    return arguments


def checkpoint_key(name: str) -> str:
    """The checkpoint's name of a parameter of the peft-wrapped base (peft moves the wrapped layer's own weights
    under `base_layer`)."""
    return name.replace(".base_layer.", ".")


def read_own_slices(base, base_keys: set, quantized: Dict[str, tuple], weights_dir: Path) -> None:
    """Fill every unquantized weight of the base model with this rank's slices of the checkpoint."""
    quantized_weights = {f"{name}.weight" for name in quantized}
    targets = {}
    for name, param in base.named_parameters():
        key = checkpoint_key(name)
        if key in base_keys and key not in quantized_weights:
            targets[key] = param
    check_complete(targets, tensor_files(weights_dir), weights_dir)
    dcp.load(targets, storage_reader=HuggingFaceStorageReader(str(weights_dir)))


def quantize_own_shards(quantized: Dict[str, tuple], weights_dir: Path, device: torch.device,
                        dtype: torch.dtype) -> None:
    """Quantize each linear weight on `device`, one at a time, and keep this rank's shard of its packed storage."""
    if not quantized:
        return
    from bitsandbytes.nn import Params4bit
    files = tensor_files(weights_dir)
    for name, (module, arguments) in quantized.items():
        full = read_tensor(files, f"{name}.weight")
        # As transformers: cast to the load dtype, then Params4bit.to(device) quantizes and gives the module its
        # quant_state.
        packed = Params4bit(full.to(dtype), requires_grad=False, module=module,
                            **arguments).to(device)
        copy_full_tensor(module.weight, packed.data)
        del full, packed


def tensor_files(weights_dir: Path) -> Dict[str, Path]:
    """{tensor name: the safetensors file holding it} from the files' headers (no tensor is read)."""
    from safetensors import safe_open
    files = {}
    for file in sorted(weights_dir.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            files.update(dict.fromkeys(handle.keys(), file))
    if not files:
        raise ValueError(f"model.name_or_path: no .safetensors files in {weights_dir}; sharded loading reads them "
                         f"(save the model with transformers' save_pretrained)")
    return files


def check_complete(names, files: Dict[str, Path], weights_dir: Path) -> None:
    missing = sorted(set(names) - set(files))
    if missing:
        raise ValueError(f"model.name_or_path: the safetensors files in {weights_dir} lack {len(missing)} weights the "
                         f"model needs (e.g. {missing[:3]}); sharded loading (strategy=fsdp or zero3) reads the "
                         f"weights by their names: save the model with transformers' save_pretrained, or use "
                         f"strategy=ddp")


def read_tensor(files: Dict[str, Path], key: str) -> torch.Tensor:
    """One tensor, the file opened for it alone: the file's mapping closes with it, so a process that reads a
    checkpoint tensor by tensor never holds more of it than one tensor."""
    from safetensors import safe_open
    with safe_open(files[key], framework="pt") as handle:
        return handle.get_tensor(key)
