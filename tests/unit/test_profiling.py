"""train.profile_steps records exactly the steps asked for, on each rank, and refuses a range that is not one."""
import pytest
import torch
from omegaconf import OmegaConf

from shardtune.errors import ConfigError
from shardtune.launcher.validation import _validate_train
from shardtune.trainer.profiling import StepProfiler

from conftest import compose_cfg


def test_the_steps_asked_for_are_recorded(tmp_path):
    profiler = StepProfiler([2, 3], tmp_path, rank=1, device=torch.device("cpu"), compiled_and_checkpointed=False)
    for step in range(1, 5):
        profiler.step_started(step)
        torch.ones(64, 64).matmul(torch.full((64, 64), float(step))).sum()
        profiler.step_done(step)
    table = (tmp_path / "profile" / "rank1-top.txt").read_text()
    assert table.startswith("steps 2-3\n") and "aten::matmul" in table
    assert table.count("aten::mm ") == 1 and " 2  " in table.split("aten::mm ")[1].splitlines()[0]  # two steps' calls
    assert (tmp_path / "profile" / "rank1.json").stat().st_size > 0


def test_no_profile_by_default_writes_nothing(tmp_path):
    profiler = StepProfiler([], tmp_path, rank=0, device=torch.device("cpu"), compiled_and_checkpointed=False)
    profiler.step_started(1)
    profiler.step_done(1)
    assert not (tmp_path / "profile").exists()


def test_no_allocation_record_where_compiled_blocks_are_checkpointed(tmp_path):
    """PyTorch ends the process when allocations are recorded while compiled code runs inside activation checkpointing
    (pytorch/pytorch#179536): the profile leaves that record out there, and on CPU, which has none."""
    def records_memory(device_type, compiled_and_checkpointed):
        return StepProfiler([2, 3], tmp_path, 0, torch.device(device_type), compiled_and_checkpointed).record_memory
    assert records_memory("cuda", compiled_and_checkpointed=False)
    assert not records_memory("cuda", compiled_and_checkpointed=True)
    assert not records_memory("cpu", compiled_and_checkpointed=False)


@pytest.mark.parametrize("steps", [[3], [0, 2], [5, 4]])
def test_a_range_that_is_not_one_is_refused(steps):
    train = compose_cfg("experiment=demo").train
    OmegaConf.update(train, "profile_steps", steps)
    with pytest.raises(ConfigError, match="train.profile_steps.*first, last"):
        _validate_train(train, "cpu", 2)
