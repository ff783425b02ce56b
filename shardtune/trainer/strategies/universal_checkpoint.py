"""A DeepSpeed ZeRO checkpoint resumed on another world size, through DeepSpeed's universal checkpoint.

ZeRO saves each rank's partition of the optimizer states (and, at stage 3, of the weights), and DeepSpeed refuses to
load those partitions on another number of ranks. `deepspeed.checkpoint.ds_to_universal` rewrites them as one file
per parameter (its fp32 weights and Adam moments, whole), which an engine started with `checkpoint.load_universal`
loads on any world size, taking its own partition. shardtune converts once, on rank 0, into `<checkpoint>/universal/`
next to the original, which stays as it was (a run on the old world size still loads it); the conversion is staged
and renamed, so a cut-off one is done again, and a converted one is reused (a restart of the workers).
"""
import contextlib
import io
import logging
import os
import shutil
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger("shardtune")

UNIVERSAL_DIR = "universal"


def convert_once(checkpoint: Path, tag: str, saved_world_size: int, device: torch.device) -> Path:
    """The universal form of the ZeRO checkpoint `checkpoint/tag`, converted by rank 0 unless already there; every
    rank returns once it is there, or raises when the conversion failed. Collective."""
    target = checkpoint / UNIVERSAL_DIR
    error = None
    if dist.get_rank() == 0 and not target.is_dir():
        log.info("resume: the DeepSpeed checkpoint %s was written on %d rank(s), this run has %d: converting it to "
                 "a universal checkpoint in %s (deepspeed.checkpoint.ds_to_universal; the original is kept)",
                 checkpoint, saved_world_size, dist.get_world_size(), target)
        started = time.time()
        try:
            _convert(checkpoint / tag, target, tag)
            log.info("resume: converted in %.1f s", time.time() - started)
        except Exception as exception:  # anything DeepSpeed's converter raises; every rank must hear of it
            error = exception
    # Every rank learns whether rank 0's conversion failed, rather than waiting for a checkpoint that never comes.
    failed = torch.tensor([int(error is not None)], device=device)  # NCCL: on the GPU
    dist.all_reduce(failed)
    if failed.item():
        reason = f"{type(error).__name__}: {error}" if error is not None else "on rank 0"
        raise RuntimeError(
            f"resume: the DeepSpeed checkpoint {checkpoint} was written on {saved_world_size} rank(s), this run has "
            f"{dist.get_world_size()}, and converting it to a universal checkpoint failed ({reason}); the checkpoint "
            f"itself is untouched. Resume it on {saved_world_size} rank(s) (launcher.nproc_per_node), or convert it "
            f"by hand: python -m deepspeed.checkpoint.ds_to_universal --input_folder {checkpoint / tag} "
            f"--output_folder {target / tag} --inject_missing_state") from error
    return target


def _convert(source: Path, target: Path, tag: str) -> None:
    """Run ds_to_universal from `source` into `target/tag` through a staging directory."""
    from deepspeed.checkpoint import ds_to_universal
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)  # a conversion that was cut off
    # One process: the converter's pools would fork this worker (CUDA and process groups included). Tiny to large
    # models convert in seconds to minutes; convert by hand with more workers (--num_extract_workers) if it is slow.
    # inject_missing_state: the converter asks for metadata that only Megatron-DeepSpeed's models add; plain
    # data-parallel ZeRO needs none of it.
    args = Namespace(input_folder=str(source), output_folder=str(staging / tag), num_extract_workers=1,
                     num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):  # its prints and progress bars
            ds_to_universal.main(args)
    except BaseException:
        sys.stderr.write(printed.getvalue()[-2000:])  # what it printed up to the failure: the error's context
        raise
    os.replace(staging, target)  # only a whole conversion is ever found
