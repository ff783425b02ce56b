"""The storage writer of DCP checkpoints, and the faults tests inject into it.

SHARDTUNE_INJECT_SAVE_FAULT="RANK:STEP:KIND,..." makes that rank's writer, when it saves the checkpoint of that step,
first write its shard files and then
    pause:   stop there for good, so that a test can kill the rank in the middle of the save;
    enospc:  raise OSError(ENOSPC), as a full disk would.
Only the first attempt of the workers gets the faults (TORCHELASTIC_RESTART_COUNT=0): a group that torchrun restarted
runs clean. An environment variable, like trainer/nonfinite.py's, because a tiny test run neither fills a disk nor
lasts long enough to be killed mid-save by chance; read at each save, in the worker (the launcher that forks the
workers has no restart count). A run without it writes with DCP's own writer.
"""
import errno
import os
import time
from pathlib import Path

from torch.distributed.checkpoint import FileSystemWriter

from ..run_dir import STEP_DIR

INJECT_ENV = "SHARDTUNE_INJECT_SAVE_FAULT"


def injected_faults() -> dict:
    """{(rank, step): kind} of this attempt of the workers."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return {}
    faults = {}
    for entry in filter(None, os.environ.get(INJECT_ENV, "").split(",")):
        rank, step, kind = entry.split(":")
        assert kind in ("pause", "enospc"), f"{INJECT_ENV}: unknown fault {kind!r}"
        faults[int(rank), int(step)] = kind
    return faults


def storage_writer(path: Path, rank: int) -> FileSystemWriter:
    """The writer of `<output_dir>/checkpoints/step-N/state` on this rank."""
    match = STEP_DIR.match(path.parent.name)
    kind = injected_faults().get((rank, int(match.group(1)))) if match else None
    return _FaultyWriter(path, kind) if kind else FileSystemWriter(path)


class _FaultyWriter(FileSystemWriter):
    def __init__(self, path: Path, kind: str):
        super().__init__(path)
        self.kind = kind

    def write_data(self, plan, planner):
        written = super().write_data(plan, planner)
        written.wait()  # this rank's shard files are on disk
        if self.kind == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        while True:  # pause: until the test kills this process
            time.sleep(60)
