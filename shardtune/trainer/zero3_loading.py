"""Building a model under DeepSpeed ZeRO-3 without a whole copy of it on any rank.

transformers builds the model under DeepSpeed's zero.Init (each parameter is partitioned as soon as its module is
built), then each parameter is gathered in turn, rank 0 fills it from the safetensors files, and DeepSpeed
partitions it again: a rank holds its partitions and one whole tensor at a time. (transformers' own from_pretrained
under ZeRO-3 reads the whole checkpoint on every rank: a copy of the model per rank in host memory.)
"""
import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM

from . import activations
from ..attention import implementation as attention_implementation
from .model import load_dtype
from .sharded_loading import check_complete, local_weights_dir, read_tensor, tensor_files


def build_partitioned_model(cfg, source: str, device: torch.device, compute_dtype: torch.dtype) -> torch.nn.Module:
    """The full fine-tuning model, partitioned by ZeRO-3 while it is built. Call while transformers' HfDeepSpeedConfig
    for stage 3 is alive: it is what makes transformers build under zero.Init."""
    import deepspeed
    weights_dir = local_weights_dir(cfg.model, source)
    config = AutoConfig.from_pretrained(weights_dir, trust_remote_code=cfg.model.trust_remote_code)
    model = AutoModelForCausalLM.from_config(config, dtype=load_dtype(cfg, compute_dtype),
                                             attn_implementation=attention_implementation(cfg, device.type),
                                             trust_remote_code=cfg.model.trust_remote_code)
    model.config.use_cache = False  # the KV cache only serves generation
    files = tensor_files(weights_dir)  # every rank: all must stop alike where a weight is missing
    check_complete([name for name, _ in model.named_parameters()], files, weights_dir)  # tied weights: once
    for name, param in model.named_parameters():
        # Gathered on every rank, written on rank 0, partitioned again (and broadcast) on leaving.
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if dist.get_rank() == 0:
                with torch.no_grad():
                    param.copy_(read_tensor(files, name))
    activations.enable_for_run(model, cfg, device.type)
    return model
