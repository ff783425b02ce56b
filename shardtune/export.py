"""`shardtune export`: a run's trained weights as a plain Hugging Face model directory.

Owns turning what finished_run.py loads into a directory that `AutoModelForCausalLM.from_pretrained` reads
without peft or bitsandbytes: LoRA adapters merged into the base (peft's merge_and_unload), QLoRA adapters
merged into the dequantized 4-bit / 8-bit base, full fine-tunes from final/ or any checkpoint consolidated
to safetensors. The directory is written next to its destination and renamed into place, so a reader
never sees a half-written export.
"""
import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch

from .finished_run import RunDirError, Source, build_trained_model, load_tokenizer, resolve_source
from .precision import DTYPES

log = logging.getLogger("shardtune")


class ExportError(ValueError):
    """An output directory export must not write to; the message names it."""


def default_output_dir(source: Source) -> Path:
    """<run>/export for final/, <run>/export-step-N for a checkpoint."""
    return source.run_dir / ("export" if source.kind == "final" else f"export-{source.path.name}")


def check_output_dir(output_dir: Path, force: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"output directory {output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not force:
        raise ExportError(f"output directory {output_dir} already exists and is not empty; "
                          f"pass --force to replace it")


def export_model(run_dir, output_dir=None, checkpoint: Optional[str] = None, dtype: str = "bf16",
                 force: bool = False) -> Path:
    """Write the merged or consolidated model of `run_dir` (final/, or `checkpoint`: step-N or a path) in
    `dtype` (bf16, fp16 or fp32) to `output_dir` (default: <run>/export[-step-N]); return the directory."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    source = resolve_source(run_dir, checkpoint)
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(source)
    check_output_dir(output_dir, force)  # before minutes of loading, not after
    torch_dtype = DTYPES[dtype]
    model = merged_model(source, torch_dtype)
    tokenizer = load_tokenizer(source)
    staging = output_dir.with_name(output_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)  # a leftover from an export that was killed
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        check_output_dir(output_dir, force)
        replace_dir(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s (%s, %s) to %s", source.path, source.config.method.name, dtype, output_dir)
    return output_dir


def merged_model(source: Source, dtype: torch.dtype) -> torch.nn.Module:
    """The trained model with no adapters and no quantization left, in `dtype`, ready for inference."""
    method = source.config.method.name
    cpu = torch.device("cpu")
    if method == "qlora":
        # Dequantized before the adapters go on: merging into bitsandbytes layers would make peft quantize
        # the merged weights again, and the export would no longer reproduce the trained model.
        model = build_trained_model(source, cpu, dequantize_to=dtype)
    else:
        model = build_trained_model(source, cpu, dtype=dtype)
    if method != "full":
        # peft adds scale * B @ A (computed in the adapters' fp32) to each base weight, rounding once to `dtype`.
        model = model.merge_and_unload()
    model.to(dtype)
    model.config.use_cache = True  # training turns the KV cache off; generation wants it back
    return model


def replace_dir(staging: Path, output_dir: Path) -> None:
    """Move `staging` to `output_dir`; a replaced directory is moved aside first and deleted only once the
    new one is in place, so `output_dir` is at every moment either the old export or the new one."""
    if not output_dir.exists():
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, output_dir)
        return
    old = output_dir.with_name(output_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(output_dir, old)
    os.replace(staging, output_dir)
    shutil.rmtree(old)


def export_command(argv: list) -> None:
    """`shardtune export <run_dir> [--checkpoint step-N|PATH] [--output DIR] [--dtype bf16|fp16|fp32] [--force]`"""
    parser = argparse.ArgumentParser(
        prog="shardtune export",
        description="Write a run's model as a Hugging Face directory that transformers loads without peft: "
                    "LoRA/QLoRA adapters merged into the (dequantized) base, full fine-tunes consolidated.")
    parser.add_argument("run_dir", help="the run's output_dir (holds config.yaml)")
    parser.add_argument("--checkpoint", help="step-N or a checkpoint directory (default: the run's final/)")
    parser.add_argument("--output", help="output directory (default: <run_dir>/export, or export-step-N)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="dtype of the saved weights")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    from .quiet import quiet_libraries
    quiet_libraries()
    try:
        output_dir = export_model(args.run_dir, args.output, args.checkpoint, args.dtype, args.force)
    except (RunDirError, ExportError) as error:
        sys.exit(f"shardtune: export: {error}")
    print(output_dir)
