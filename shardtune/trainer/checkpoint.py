"""Resumable checkpoints: `<output_dir>/checkpoints/step-N/`.

Each holds the strategy's sharded model and optimizer state, `trainer_state.json` (step, data position,
scheduler) and one RNG file per rank. Rank 0 writes the COMPLETE marker only after every rank has
finished writing, so a directory without it (a crash, a kill mid-save) is never picked for resume.
"""
import json
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from ..run_dir import COMPLETE_MARKER, checkpoint_dir, complete_checkpoints, is_complete, write_json_atomic


def find_resume_checkpoint(output_dir, resume: str) -> Optional[Path]:
    if resume == "none":
        return None
    if resume == "auto":
        done = complete_checkpoints(output_dir)
        return done[-1] if done else None
    path = Path(resume)
    if not is_complete(path):
        raise ValueError(f"resume: {path} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    return path


def save_checkpoint(strategy, output_dir, step: int, trainer_state: dict, keep: int) -> Path:
    """Collective: every rank calls it."""
    path = checkpoint_dir(output_dir, step)
    rank = dist.get_rank()
    if rank == 0 and path.exists():
        shutil.rmtree(path)  # a leftover from a save that did not complete
    dist.barrier()
    path.mkdir(parents=True, exist_ok=True)
    strategy.save(path)
    torch.save(rng_state(), path / f"rng-rank{rank}.pt")
    if rank == 0:
        write_json_atomic(path / "trainer_state.json", {**trainer_state, "scheduler": strategy.scheduler.state_dict()})
    dist.barrier()  # every rank's shards are on disk before the marker says so
    if rank == 0:
        (path / COMPLETE_MARKER).touch()
        for old in complete_checkpoints(output_dir)[:-keep] if keep > 0 else ():
            shutil.rmtree(old)
    dist.barrier()
    return path


def load_checkpoint(strategy, path: Path) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG; return the trainer state."""
    strategy.load(path)
    state = json.loads((path / "trainer_state.json").read_text())
    strategy.scheduler.load_state_dict(state.pop("scheduler"))
    rng_file = path / f"rng-rank{dist.get_rank()}.pt"
    if rng_file.exists():  # absent when the world size changed; sampling then differs, nothing else
        restore_rng_state(torch.load(rng_file, weights_only=False))
    return state


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
