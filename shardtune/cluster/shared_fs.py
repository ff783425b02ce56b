"""Files that every node needs, written once per cluster.

On a shared filesystem one writer serves every node: global rank 0 writes first. A node that does not
see the file afterwards (its own disk, not shared) then writes its own copy from its first rank. Writers
stage in a temporary directory and rename it into place, so a reader never sees half a file and, where a
slow shared filesystem hides the first copy, the second rename changes nothing (run_dir.write_directory_atomically).
"""
import os
from typing import Callable

import torch.distributed as dist


def write_once_per_filesystem(is_complete: Callable[[], bool], write: Callable[[], None]) -> None:
    """Collective: every rank calls it; at most one rank per filesystem calls write()."""
    first_of_run = dist.get_rank() == 0
    first_of_node = int(os.environ.get("LOCAL_RANK", 0)) == 0
    for is_writer in (first_of_run, first_of_node):
        if is_writer and not is_complete():
            write()
        dist.barrier()
