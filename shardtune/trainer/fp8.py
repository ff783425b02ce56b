"""train.fp8: full fine-tuning with float8 matmuls (torchao.float8), on the decoder layers' linear layers large
enough for float8 to pay (torchao's own filter for the recipe; never the output head, whose logits feed the loss).

The swap to torchao's Float8Linear happens before a strategy wraps or shards the model, so that FSDP2 all-gathers
those weights in float8 under the tensorwise recipe (and precomputes their scales after each optimizer step).
Weights, gradients and optimizer state stay in their usual dtypes: only the matmuls run in float8. Compiled blocks
(train.compile=blocks) fuse the casts around them; eager float8 is slower than bf16.
"""
import logging
from dataclasses import replace
from typing import Tuple

import torch

from ..errors import ConfigError

log = logging.getLogger(__name__)

RECIPES = ("tensorwise", "rowwise")
CHOICES = ("auto", "none", *RECIPES)
# Hopper (sm_90) and Ada (sm_89) have float8 tensor cores.
MIN_CAPABILITY = (8, 9)


def choose(train_cfg, device_type: str, method: str, strategy_kind: str) -> Tuple[str, str]:
    """(the recipe this run uses or "none", why a recipe is not used). A recipe asked for by name that this run
    cannot have is refused naming train.fp8."""
    asked = train_cfg.fp8
    if asked == "none":
        return "none", ""
    missing = ("only for full fine-tuning (LoRA's frozen base keeps its matmuls in the compute dtype)"
               if method != "full"
               else "needs a CUDA GPU" if device_type != "cuda"
               else "only with DDP and FSDP, not DeepSpeed" if strategy_kind == "deepspeed"
               else "needs torchao (pip install torchao)" if not torchao_installed()
               else None)
    if asked == "auto":
        # Off until its loss curve is measured against bf16 within tests/gpu's 1% (the condition for a
        # default); train.fp8=tensorwise or rowwise uses it now.
        return "none", missing or "auto does not use it yet"
    if missing:
        raise ConfigError("train.fp8", f"{asked}: {missing}")
    return asked, ""


def torchao_installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("torchao") is not None


def check_device(recipe: str, device: torch.device) -> None:
    """In the worker, where CUDA may be asked: refuse a GPU without float8 tensor cores, naming the key."""
    if recipe != "none" and torch.cuda.get_device_capability(device) < MIN_CAPABILITY:
        raise ConfigError("train.fp8", f"{recipe} needs float8 tensor cores (compute capability 8.9 or newer); "
                                       f"{torch.cuda.get_device_name(device)} has "
                                       f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}")


def convert(model: torch.nn.Module, recipe: str, sharded: bool) -> int:
    """Swap the large linear layers of `model` for Float8Linear, in place; returns how many were swapped."""
    from torchao.float8 import Float8LinearConfig, Float8LinearRecipeName, convert_to_float8_training
    from torchao.float8 import _auto_filter_for_recipe  # torchao's size heuristics, measured on H100s
    from torchao.float8.float8_linear import Float8Linear
    config = Float8LinearConfig.from_recipe_name(Float8LinearRecipeName(recipe))
    if recipe == "tensorwise" and sharded:
        config = replace(config, enable_fsdp_float8_all_gather=True)
    convert_to_float8_training(model, config=config, module_filter_fn=_auto_filter_for_recipe(recipe, ["lm_head"]))
    return sum(isinstance(module, Float8Linear) for module in model.modules())


def after_optimizer_step(model: torch.nn.Module, recipe: str, sharded: bool) -> None:
    """FSDP2's float8 all-gather sends weights already scaled: compute every weight's scale once per step, in one
    pass over the shards, instead of per layer in the next forward."""
    if recipe == "tensorwise" and sharded:
        from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp
        precompute_float8_dynamic_scale_for_fsdp(model)


def describe(recipe: str, why_not: str) -> str:
    return f"fp8: {recipe if recipe != 'none' else 'off'}" + (f" ({why_not})" if why_not else "")
