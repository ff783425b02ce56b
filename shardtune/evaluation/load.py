"""Loading models to generate with: what a finished run saved in final/ (a full model, or a peft adapter
over its base, quantized again for QLoRA) and the base the run started from, each loaded the way the
run's method trains it, so "before" and "after" see the same weights the training did."""
from pathlib import Path
from typing import Tuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..config import load_resolved
from ..trainer.model import DTYPES, RANDOM_INIT_DIR, build_tokenizer, quantization_config


def load_model(path, method_cfg, dtype: torch.dtype, device="cpu"):
    """A transformers model directory, or a peft adapter directory (found by its adapter_config.json,
    which names the base), in eval mode. With method qlora the base weights are quantized while loading,
    as training quantized them."""
    kwargs = {"dtype": dtype}
    if method_cfg.name == "qlora":
        kwargs.update(quantization_config=quantization_config(method_cfg, dtype), device_map={"": device})
    if Path(path, "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM
        model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if method_cfg.name != "qlora":
        model.to(device)
    return model.eval()


def load_run_final(run_dir, device="cpu") -> Tuple[torch.nn.Module, object]:
    """(model, tokenizer) of <run_dir>/final, in the run's training precision."""
    cfg = load_resolved(Path(run_dir, "config.yaml"))
    final = Path(run_dir, "final")
    if not final.is_dir():
        raise ValueError(f"{run_dir} has no final/ (did the run finish, with train.save_final=true?)")
    return load_model(final, cfg.method, DTYPES[cfg.train.precision], device), AutoTokenizer.from_pretrained(final)


def load_run_base(run_dir, device="cpu") -> Tuple[torch.nn.Module, object]:
    """(model, tokenizer) the run started from: model.name_or_path, or the run's random-init/."""
    cfg = load_resolved(Path(run_dir, "config.yaml"))
    source = Path(run_dir, RANDOM_INIT_DIR) if cfg.model.init == "random" else cfg.model.name_or_path
    return load_model(source, cfg.method, DTYPES[cfg.train.precision], device), build_tokenizer(cfg.model)
