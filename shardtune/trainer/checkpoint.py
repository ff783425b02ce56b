"""Resumable checkpoints: `<output_dir>/checkpoints/step-N/`.

Each holds the strategy's sharded model and optimizer state, `trainer_state.json` (step, data position,
scheduler, and the layout that wrote it: micro batch, grad_accum, world size) and one RNG file per rank. Rank 0
writes the COMPLETE marker only after every rank has finished writing, so a directory without it (a crash, a kill
mid-save) is never picked for resume; older checkpoints are deleted (train.keep_checkpoints) only after that. A save
that fails (a full disk) removes its partial directory and stops the run on every rank with the path and the space
needed; one that obviously cannot fit is refused before it starts.

Written in place, not staged and renamed: the marker, written last by rank 0 once every rank has reported its part
written, already makes a directory count only once whole; a staging directory would need the same agreement before
its rename, and one more step that can be cut off.
"""
import json
import logging
import random
import shutil
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from ..data.batches import DataPosition
from ..run_dir import (COMPLETE_MARKER, checkpoint_dir, checkpoint_root, complete_checkpoints, is_complete,
                       write_json_atomic)

log = logging.getLogger("shardtune")


def find_resume_checkpoint(output_dir, resume: str, restarted: bool = False) -> Optional[Path]:
    """The checkpoint a run continues from. `restarted`: torchrun restarted the workers after one failed
    (launcher.max_restarts); they continue from the newest complete checkpoint whatever `resume` says, since
    starting over would throw away the run's progress."""
    if restarted and complete_checkpoints(output_dir):
        resume = "auto"
    if resume == "none":
        return None
    if resume == "auto":
        done = complete_checkpoints(output_dir)
        return done[-1] if done else None
    path = Path(resume)
    if not is_complete(path):
        raise ValueError(f"resume: {path} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    return path


def saved_world_size(path: Path, default: int) -> int:
    """The number of ranks that wrote the checkpoint at `path` (`default` for one that does not record it)."""
    return json.loads((path / "trainer_state.json").read_text()).get("world_size", default)


def data_position(state: dict, num_train_rows: int, micro_batch_size: int, world_size: int) -> DataPosition:
    """Where the saved run was in the training data, whatever micro batch and world size this run has. Checkpoints
    record it (data_epoch, data_rows); those of earlier versions only each rank's micro-batches done, at the micro batch
    and world size they record (this run's where they record none): k micro-batches on each of W ranks are the first
    k * micro_batch_size * W rows of the epoch's order (data/batches.py)."""
    if "data_epoch" in state:
        return DataPosition(state["data_epoch"], state["data_rows"])
    rows_per_global_batch = state.get("micro_batch_size", micro_batch_size) * state.get("world_size", world_size)
    epoch, batches = divmod(state["micro_batches_done"], num_train_rows // rows_per_global_batch)
    return DataPosition(epoch, batches * rows_per_global_batch)


def report_layout_change(state: dict, train, world_size: int, position: DataPosition) -> None:
    """Say what a resume on another world size changes: where it continues, and the rows per step if they change
    (a warning: the steps done and the learning-rate schedule, by step, stay as they are). Checkpoints of earlier
    versions record no grad_accum: their global batch is not known, and not compared."""
    saved_world = state.get("world_size", world_size)
    now = train.micro_batch_size * train.grad_accum * world_size
    saved = state["micro_batch_size"] * state["grad_accum"] * saved_world if "grad_accum" in state else now
    if saved_world == world_size and saved == now:
        return
    log.info("the checkpoint was written on %d rank(s), this run has %d: continuing at row %d of epoch %d's order",
             saved_world, world_size, position.rows, position.epoch)
    if saved != now:
        per_rank, remainder = divmod(saved, train.micro_batch_size * world_size)
        keep = (f"train.grad_accum={per_rank} keeps {saved} (train.global_batch_size={saved} checks it)"
                if per_rank and not remainder else
                f"no train.grad_accum keeps {saved} at train.micro_batch_size={train.micro_batch_size}")
        log.warning("the global batch changes from %d rows per step (the checkpoint's) to %d (micro_batch_size %d x "
                    "grad_accum %d x world size %d): the steps done and the learning-rate schedule by step stay, each "
                    "step now reads %d rows; %s", saved, now, train.micro_batch_size, train.grad_accum, world_size,
                    now, keep)


class CheckpointError(OSError):
    """A checkpoint could not be written (no space, a write error); every rank raises it alike."""


class Checkpointer:
    """Saves checkpoints, each marked complete only once every rank has written its part: at once (sync), or in a
    background thread while training goes on (train.async_checkpoint). One save at a time: the next waits for the
    one before it. Collective: every rank calls each method at the same point of the loop."""

    def __init__(self, strategy, output_dir, keep: int, async_save: bool, watch, setup_timeout_s: float):
        self.strategy, self.output_dir, self.keep, self.watch = strategy, output_dir, keep, watch
        self.rank = dist.get_rank()
        # Background saves run DCP's collectives on a group of their own: the loop's all-reduces on the default
        # group go on meanwhile, and two threads on one group would mix up their messages. gloo: DCP gathers
        # on the CPU.
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=setup_timeout_s)) if async_save else None
        self.pending: Optional[Tuple[Path, int, Optional[Future]]] = None  # a save not yet marked complete

    def save(self, step: int, trainer_state: dict) -> Path:
        """Write the checkpoint of `step`; synchronous saves are complete on return, background ones later."""
        self.wait()
        path = checkpoint_dir(self.output_dir, step)
        with self.watch.alone():
            needed = self._check_space(path)
            if self.rank == 0 and path.exists():
                shutil.rmtree(path)  # a leftover from a save that did not complete
            dist.barrier()
            self.pending = (path, needed, None)
            # Every rank alike, before the strategy's save starts collectives that a failed rank would miss.
            self._raise_if_failed(_attempt(lambda: self._write_small_files(path, trainer_state)))
            if self.group is None:
                self._complete(_attempt(lambda: self.strategy.save(path)))
            else:
                self.pending = (path, needed, self.strategy.save_async(path, self.group))
        return path

    def _write_small_files(self, path: Path, trainer_state: dict) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), path / f"rng-rank{self.rank}.pt")
        if self.rank == 0:
            write_json_atomic(path / "trainer_state.json",
                              {**trainer_state, "scheduler": self.strategy.scheduler.state_dict()})

    def flags(self) -> list:
        """[this rank's background save is done], summed over the ranks by the step's all-reduce (trainer.py):
        once every rank's is, `wait` marks it complete without waiting."""
        return [int(self.pending is not None and self.pending[2].done())]

    def wait(self) -> None:
        """Wait for the background save, if any, and mark it complete (or raise its error on every rank)."""
        if self.pending is None:
            return
        with self.watch.alone():
            self._complete(_attempt(self.pending[2].result))

    def _complete(self, error) -> None:
        """Mark the pending save complete once every rank has written its part, and only then delete the checkpoints
        beyond train.keep_checkpoints (and debris of saves that were cut off); raise on every rank if one failed."""
        self._raise_if_failed(error)
        path, _, _ = self.pending
        self.pending = None
        if self.rank == 0:
            (path / COMPLETE_MARKER).touch()
            for old in complete_checkpoints(self.output_dir)[:-self.keep] if self.keep > 0 else ():
                shutil.rmtree(old)
            for debris in checkpoint_root(self.output_dir).glob("step-*"):
                if not is_complete(debris):
                    shutil.rmtree(debris, ignore_errors=True)
        dist.barrier()

    def _raise_if_failed(self, error) -> None:
        """Some rank's writing failed: the partial directory goes and every rank raises, naming the path and the
        space the checkpoint needs."""
        failed = torch.tensor([int(error is not None)], device=self.strategy.device)  # NCCL: on the GPU
        dist.all_reduce(failed)
        if not failed.item():
            return
        path, needed, _ = self.pending
        self.pending = None
        if self.rank == 0:
            shutil.rmtree(path, ignore_errors=True)  # never resumed from without its marker; gone, it takes no room
        reason = f": {_reason(error)}" if error is not None else " on another rank"
        raise CheckpointError(f"saving checkpoint {path} failed{reason}; it needs about {_human(needed)} "
                              f"({needed} bytes; {_human(_free_bytes(path.parent))} free now). The partial "
                              f"checkpoint was removed; the earlier ones are kept") from error

    def _check_space(self, path: Path) -> int:
        """Refuse, on every rank alike, a checkpoint that cannot fit the free space; the bytes it needs."""
        needed = self.strategy.checkpoint_bytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        free = torch.tensor([_free_bytes(path.parent)], dtype=torch.float64, device=self.strategy.device)
        dist.all_reduce(free, op=dist.ReduceOp.MIN)  # the least any rank sees: one verdict for all
        if free.item() < needed:
            raise CheckpointError(f"no space for checkpoint {path}: it needs about {_human(needed)} ({needed} bytes) "
                                  f"but {path.parent} has {_human(free.item())} free; free some space, lower "
                                  f"train.keep_checkpoints or choose another output_dir. The earlier checkpoints "
                                  f"are kept")
        return needed


def _attempt(write: Callable) -> Optional[BaseException]:
    """The error of `write` that a full or failing disk causes (DCP reports every rank's as a CheckpointException),
    or None."""
    try:
        write()
    except (OSError, CheckpointException) as error:
        return error
    return None


def _free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def _human(num_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024


def _reason(error) -> str:
    """The first underlying error: DCP wraps each rank's in a CheckpointException with its traceback."""
    if isinstance(error, CheckpointException) and error.failures:
        rank, (cause, _) = next(iter(sorted(error.failures.items(), key=lambda item: item[0])))
        return f"{type(cause).__name__} on rank {rank}: {cause}"
    return f"{type(error).__name__}: {error}"


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
