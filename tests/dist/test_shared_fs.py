"""One writer per file per filesystem (shardtune/cluster/shared_fs.py), with 4 gloo processes standing for
2 nodes x 2 ranks: where the nodes share a directory only global rank 0 writes; where each node has its
own, each node's first rank writes its copy. The random init of the model goes through the same rule."""
import os
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from shardtune.cluster.shared_fs import write_once_per_filesystem
from shardtune.run_dir import write_directory_atomically

pytestmark = pytest.mark.fast
NODES, RANKS_PER_NODE = 2, 2


def worker(rank: int, init_file: str, root: str, shared: bool) -> None:
    os.environ["LOCAL_RANK"] = str(rank % RANKS_PER_NODE)  # what torchrun sets on each node
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=NODES * RANKS_PER_NODE)
    node = rank // RANKS_PER_NODE
    target = Path(root, "shared" if shared else f"node{node}", "entry")

    def is_complete() -> bool:
        return (target / "COMPLETE").exists()

    def fill(staging: Path) -> None:
        (staging / f"written-by-rank{rank}").touch()
        (staging / "COMPLETE").touch()

    write_once_per_filesystem(is_complete, lambda: write_directory_atomically(target, fill, is_complete))
    assert is_complete()  # every rank sees a complete entry after the collective
    dist.destroy_process_group()


@pytest.mark.parametrize("shared, expected", [
    (True, {"shared": ["written-by-rank0"]}),
    (False, {"node0": ["written-by-rank0"], "node1": ["written-by-rank2"]}),
], ids=["shared-filesystem", "node-local-disks"])
def test_one_writer_per_filesystem(tmp_path, shared, expected):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path / "fs"), shared), nprocs=NODES * RANKS_PER_NODE)
    found = {place.name: sorted(p.name for p in (place / "entry").iterdir() if p.name != "COMPLETE")
             for place in (tmp_path / "fs").iterdir()}
    assert found == expected
    assert not [p for place in (tmp_path / "fs").iterdir() for p in place.iterdir() if p.name.startswith(".")]


def test_debris_without_marker_is_replaced(tmp_path):
    target = tmp_path / "entry"
    target.mkdir()
    (target / "half-written").touch()

    def fill(staging):
        (staging / "COMPLETE").touch()
    write_directory_atomically(target, fill, lambda: (target / "COMPLETE").exists())
    assert sorted(p.name for p in target.iterdir()) == ["COMPLETE"]
