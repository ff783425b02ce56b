"""model.attn_implementation: the attention kernel transformers runs. `auto` picks by the rows a run trains on.

Unpacked rows: sdpa, for which torch itself picks the fastest kernel the GPU has (cuDNN's or flash on Hopper).
Packed rows (data.packing): examples sharing a row must not attend to each other. With sdpa, transformers turns the
restarting position ids into a block-diagonal mask, and a masked sdpa computes the whole row, masked blocks included;
flash-attention's variable-length kernel computes each example alone, so auto takes it where the flash-attn package
is installed (transformers' flash_attention_2 reads the restarts itself) on a GPU in half precision.
"""
import importlib.util
from typing import Tuple

from .errors import ConfigError

AUTO = "auto"
FLASH = "flash_attention_2"


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose(cfg, device_type: str) -> Tuple[str, str]:
    """(the implementation transformers is given, why auto did not pick flash attention or "")."""
    asked = cfg.model.attn_implementation
    if asked == FLASH and not flash_attn_installed():
        raise ConfigError("model.attn_implementation", "flash_attention_2 needs the flash-attn package "
                                                       "(pip install flash-attn), which is not installed")
    if asked != AUTO:
        return asked, ""
    if not cfg.data.packing:
        return "sdpa", ""
    missing = ("needs a CUDA GPU" if device_type != "cuda"
               else "needs the flash-attn package (pip install flash-attn)" if not flash_attn_installed()
               else "needs bf16 or fp16" if cfg.train.precision == "fp32"
               else None)
    if missing:
        return "sdpa", ("packed rows attend through a block-diagonal mask; flash attention's variable-length kernel "
                        + missing)
    return FLASH, ""


def implementation(cfg, device_type: str) -> str:
    return choose(cfg, device_type)[0]


def describe(cfg, device_type: str) -> str:
    name, why_not = choose(cfg, device_type)
    return f"attention: {name}" + (f" ({why_not})" if why_not else "")
