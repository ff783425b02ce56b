"""Loading a finished run's trained model, in a single process with no process group: `load_trained_model`.

Owns finding a run's weights (final/ by default, or a complete checkpoint by name or path) and
rebuilding the model exactly as trained: for LoRA a peft model over the frozen base, for QLoRA over
the same bitsandbytes-quantized base, for full fine-tuning the transformers model. Checkpoints are read
with the library that wrote them: torch.distributed.checkpoint for DDP and FSDP, DeepSpeed's
zero_to_fp32 for ZeRO. Export (export.py) and evaluation build on it.
"""
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch

from .attention import implementation as attention_implementation
from .config import load_resolved
from .data.tokenizer import build_tokenizer
from .precision import DTYPES
from .run_dir import (COMPLETE_MARKER, CONFIG_FILE, FINAL_DIR, RANDOM_INIT_DIR, STEP_DIR, checkpoint_root,
                      complete_checkpoints, is_complete)
from .trainer.model import add_lora, load_base_model
from .trainer.strategies.deepspeed import CHECKPOINT_TAG as DEEPSPEED_TAG

DCP_DIR = "state"  # strategies/base.py saves DDP and FSDP checkpoints under step-N/state


class RunDirError(ValueError):
    """A run directory or checkpoint that cannot be loaded; the message names the path."""


class TrainedModel(NamedTuple):
    model: torch.nn.Module  # in eval mode; a peft model for LoRA and QLoRA
    tokenizer: Any
    config: Any  # the run's typed config (config.load_resolved)


class Source(NamedTuple):
    """Where a run's trained weights are, before anything is loaded."""
    run_dir: Path
    config: Any
    path: Path  # final/ or checkpoints/step-N
    kind: str  # "final", "dcp" (DDP, FSDP) or "deepspeed" (ZeRO)


def resolve_source(run_dir, checkpoint: Optional[str] = None) -> Source:
    """Check the run directory and pick the weights: final/, or `checkpoint` (a step-N name or a path).
    Raises RunDirError naming the path before anything heavy is loaded."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise RunDirError(f"{run_dir} is not a shardtune run directory: no {config_path}")
    config = load_resolved(config_path)
    if checkpoint is None:
        final = run_dir / FINAL_DIR
        if not final.is_dir():
            raise RunDirError(f"{run_dir} has no {FINAL_DIR}/ (the run did not finish, or train.save_final=false) "
                              f"and no checkpoint was given; {available_checkpoints(run_dir)}")
        return Source(run_dir, config, final, "final")
    path = checkpoint_path(run_dir, checkpoint)
    if not is_complete(path):
        raise RunDirError(f"checkpoint {path} is not complete (no {COMPLETE_MARKER} marker: its save was interrupted)")
    if (path / DCP_DIR / ".metadata").is_file():
        return Source(run_dir, config, path, "dcp")
    if (path / DEEPSPEED_TAG).is_dir():
        return Source(run_dir, config, path, "deepspeed")
    raise RunDirError(f"checkpoint {path} holds neither a torch.distributed.checkpoint ({DCP_DIR}/) "
                      f"nor a DeepSpeed checkpoint ({DEEPSPEED_TAG}/)")


def available_checkpoints(run_dir: Path) -> str:
    names = [path.name for path in complete_checkpoints(run_dir)]
    root = checkpoint_root(run_dir)
    return f"complete checkpoints in {root}: {', '.join(names)}" if names else f"no complete checkpoints in {root}"


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """A step-N name in the run's checkpoints/, or any checkpoint directory (./step-N for one here)."""
    if STEP_DIR.match(checkpoint):
        path = checkpoint_root(run_dir) / checkpoint
        if not path.is_dir():
            raise RunDirError(f"unknown checkpoint {checkpoint!r}: no {path}; {available_checkpoints(run_dir)}")
        return path
    path = Path(checkpoint)
    if not path.is_dir():
        raise RunDirError(f"checkpoint {path} is not a directory (give step-N or a checkpoint path); "
                          f"{available_checkpoints(run_dir)}")
    return path


def base_model_source(source: Source) -> str:
    """Where the frozen base (LoRA) or the starting weights (full) come from. A random-init run wrote its
    base into the run directory; it is read from the run directory given, so a moved run still loads."""
    model_cfg = source.config.model
    if model_cfg.init != "random":
        return model_cfg.name_or_path
    path = source.run_dir / RANDOM_INIT_DIR
    if not is_complete(path):
        raise RunDirError(f"the run's base model {path} is missing or incomplete (model.init=random writes it "
                          f"when training starts)")
    return str(path)


def load_trained_model(run_dir, checkpoint: Optional[str] = None, device: Union[str, torch.device] = "cpu",
                       dtype: Optional[torch.dtype] = None) -> TrainedModel:
    """The model as trained, unmerged, in eval mode, with its tokenizer and the run's config.

    `checkpoint`: None for final/, else a step-N name of the run or a checkpoint directory. `dtype`: None
    loads the dtypes training used (full: the fp32 master weights; LoRA and QLoRA: the base in
    train.precision, adapters in fp32); a dtype replaces train.precision for the base (the compute dtype
    of a quantized one), or sets the whole model's for full fine-tuning.
    """
    source = resolve_source(run_dir, checkpoint)
    model = build_trained_model(source, torch.device(device), dtype)
    return TrainedModel(model, load_tokenizer(source), source.config)


def load_tokenizer(source: Source):
    if source.kind == "final":
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(source.path)  # saved with its pad token by the trainer
    return build_tokenizer(source.config.model)


def build_trained_model(source: Source, device: torch.device, dtype: Optional[torch.dtype] = None,
                        dequantize_to: Optional[torch.dtype] = None) -> torch.nn.Module:
    """The model of `source` with its trained weights; `dtype` as in load_trained_model.

    `dequantize_to` (QLoRA, for export): the base is quantized exactly as training did, then its
    bitsandbytes layers are replaced by plain nn.Linear holding the dequantized weights in that dtype,
    before the adapters go on. Merging is then plain arithmetic that peft does not quantize again."""
    cfg = source.config
    if cfg.method.name == "full":
        return load_full_model(source, device, dtype)
    base = load_base_model(cfg, base_model_source(source), device, dtype or DTYPES[cfg.train.precision])
    if dequantize_to is not None:
        # transformers' dequantize runs bitsandbytes' own dequantize_4bit / int8_vectorwise_dequant per layer
        # and drops the quantization config, so a saved config.json describes a plain model.
        base = base.dequantize(dtype=dequantize_to).to(dequantize_to)
    model = add_lora(base, cfg.method)  # the same adapters as training; their weights are loaded next
    if cfg.method.name == "lora":  # bitsandbytes already loaded a QLoRA base onto the device
        model.to(device)
    load_adapter_weights(model, source)
    return model.eval()


def load_adapter_weights(model, source: Source) -> None:
    """Fill the adapters from final/'s adapter file or a checkpoint's trainable parameters (all or nothing)."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if source.kind == "final":
        from peft import load_peft_weights, set_peft_model_state_dict
        result = set_peft_model_state_dict(model, load_peft_weights(str(source.path), device="cpu"))
        missing = [key for key in result.missing_keys if key in trainable]
        if result.unexpected_keys or missing:
            raise RunDirError(f"adapter in {source.path} does not match the run's config (method.*): "
                              f"unexpected {result.unexpected_keys[:5]}, missing {missing[:5]}")
    elif source.kind == "dcp":
        load_dcp_model_state(source.path, trainable)  # the trainer saved named_parameters that require grad
    else:
        raise RunDirError(f"checkpoint {source.path} is a DeepSpeed checkpoint, but method={source.config.method.name} "
                          f"trains with DDP or FSDP")


def load_dcp_model_state(path: Path, state: dict) -> None:
    """Read the "model" entry of a torch.distributed.checkpoint in place into `state`'s tensors. Without a
    process group DCP reads in this process alone and reassembles each tensor from every rank's shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    try:
        with warnings.catch_warnings():  # DCP warns that it assumes a single process: that is the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"model": state}, checkpoint_id=str(path / DCP_DIR))
    except CheckpointException as error:  # missing keys, shape mismatches; each failure is (exception, frames)
        causes = "; ".join(str(f[0] if isinstance(f, tuple) else f) for f in error.failures.values())
        raise RunDirError(f"checkpoint {path} does not match the run's model: {causes}") from None


def load_full_model(source: Source, device: torch.device, dtype: Optional[torch.dtype]) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM
    dtype = dtype or torch.float32  # full fine-tuning keeps fp32 master weights (trainer/model.py load_dtype)
    if source.kind == "final":
        model_cfg = source.config.model
        attention = attention_implementation(source.config, device.type)
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, attn_implementation=attention,
                                                     trust_remote_code=model_cfg.trust_remote_code)
        return model.to(device).eval()
    # A checkpoint holds weights only: start from the run's base for the architecture, then overwrite them all.
    model = load_base_model(source.config, base_model_source(source), torch.device("cpu"), torch.float32)
    if source.kind == "dcp":
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
        state = get_model_state_dict(model)  # the keys the strategies saved with (base.py _model_state)
        load_dcp_model_state(source.path, state)
        set_model_state_dict(model, state)
    else:
        load_zero_checkpoint(model, source.path)
    return model.to(device=device, dtype=dtype).eval()


def load_zero_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Consolidate a ZeRO 1/2/3 checkpoint (every rank's fp32 partitions) with DeepSpeed's zero_to_fp32."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DEEPSPEED_TAG)
    result = model.load_state_dict(state, strict=False)  # checked below, to name the checkpoint
    if result.unexpected_keys or result.missing_keys:
        raise RunDirError(f"DeepSpeed checkpoint {path} does not match the run's model: unexpected "
                          f"{result.unexpected_keys[:5]}, missing {result.missing_keys[:5]}")
