"""A checkpoint resumed on another world size (issue 15, point 6): FSDP through DCP's resharding, ZeRO through
DeepSpeed's universal checkpoint. The run continues at the same row of the epoch's order, and with the global batch
kept (micro_batch_size x grad_accum x world size) it gives the uninterrupted run's losses step for step; the
arithmetic of the data position is checked directly on ShardedBatches."""
import json
import logging
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from datasets import Dataset
from torch.utils.data import DistributedSampler

from conftest import read_metrics, run_shardtune, train_losses
from shardtune.data import Collator, ShardedBatches
from shardtune.data.batches import DataPosition
from shardtune.trainer.strategies import universal_checkpoint
from shardtune.trainer.checkpoint import report_layout_change


# -- the data position, on ShardedBatches directly -----------------------------------------------------------------

def numbered(num_rows: int, micro_batch_size: int, rank: int, world_size: int) -> ShardedBatches:
    dataset = Dataset.from_list([{"input_ids": [i, 1], "labels": [i, 1]} for i in range(num_rows)])
    return ShardedBatches(dataset, micro_batch_size, rank, world_size, seed=7, collator=Collator(pad_token_id=0))


@pytest.mark.parametrize("num_rows", [23, 30, 32])
@pytest.mark.parametrize("world_size, micro_batch_size", [(1, 3), (2, 2), (3, 1), (4, 2)])
def test_each_rank_reads_what_distributed_sampler_gave_it(num_rows, world_size, micro_batch_size):
    # The order of the releases before the data position: same-world-size resumes and every loss stay as they were.
    for rank in range(world_size):
        sampler = DistributedSampler(range(num_rows), world_size, rank, shuffle=True, seed=7, drop_last=True)
        sampler.set_epoch(5)
        rows = list(sampler)
        expected = [rows[i:i + micro_batch_size] for i in range(0, len(rows) - micro_batch_size + 1, micro_batch_size)]
        assert list(numbered(num_rows, micro_batch_size, rank, world_size).row_indices(5)) == expected


def read(num_rows: int, world_size: int, micro_batch_size: int, position: DataPosition, num_batches: int):
    """{epoch: rows all ranks read}, in the run's order (global micro-batch by global micro-batch, rank by rank), in
    `num_batches` micro-batches per rank from `position`; and the position after."""
    streams = [numbered(num_rows, micro_batch_size, rank, world_size).stream(position) for rank in range(world_size)]
    rows, epoch = {}, position.epoch
    for _ in range(num_batches):
        for stream in streams:
            batch, after = next(stream)
            rows.setdefault(epoch, []).extend(batch["input_ids"][:, 0].tolist())
        epoch = after.epoch  # the epoch of the next micro-batch
    return rows, after


# (world size, micro batch) before and after: 4 -> 2, 4 -> 1 and back, and sizes that do not divide each other.
@pytest.mark.parametrize("before, after", [((4, 2), (2, 2)), ((4, 2), (1, 3)), ((1, 3), (4, 2)), ((2, 2), (4, 1)),
                                           ((3, 1), (2, 2))])
@pytest.mark.parametrize("batches_before", [1, 3, 5])  # 5 x 8 rows crosses into epoch 1 of 37 rows
def test_a_run_continued_on_another_world_size_reads_each_row_of_the_epoch_once(before, after, batches_before):
    num_rows = 37
    first, position = read(num_rows, *before, DataPosition(), batches_before)
    rest, end = read(num_rows, *after, position, 20)
    order = numbered(num_rows, 1, 0, 1).order
    assert position.rows == sum(len(rows) for epoch, rows in first.items() if epoch == position.epoch)
    if position.epoch in first:  # the first run read the epoch's first position.rows rows
        assert sorted(first[position.epoch]) == sorted(order(position.epoch)[:position.rows])
    for epoch in sorted(first.keys() | rest.keys())[:-1]:  # the epochs the two runs finished
        rows = first.get(epoch, []) + rest.get(epoch, [])
        assert len(rows) == len(set(rows)), f"a row read twice in epoch {epoch}"
        # The epoch's order up to a tail too short for a global micro-batch of the run that reached it.
        assert sorted(rows) == sorted(order(epoch)[:len(rows)])
        assert num_rows - len(rows) < max(before[0] * before[1], after[0] * after[1])
    assert end.epoch > position.epoch


def test_the_position_moves_to_the_next_epoch_when_its_rest_fills_no_global_micro_batch():
    batches = numbered(10, 2, 0, 2)  # 10 rows in global micro-batches of 4: 2 of them, 2 rows left over
    positions = [after for _, (_, after) in zip(range(3), batches.stream(DataPosition()))]
    assert positions == [DataPosition(0, 4), DataPosition(1, 0), DataPosition(1, 4)]
    # On one rank with micro batch 1 the same place is 4 rows in; the 2 rows the other run left over are read.
    one = numbered(10, 1, 0, 1)
    assert [after for _, (_, after) in zip(range(7), one.stream(DataPosition(0, 4)))][-1] == DataPosition(1, 1)


def test_a_changed_global_batch_is_warned_with_the_grad_accum_that_keeps_it(caplog):
    train = SimpleNamespace(micro_batch_size=4, grad_accum=1)
    saved = {"micro_batch_size": 4, "grad_accum": 1, "world_size": 2}
    with caplog.at_level(logging.INFO, logger="shardtune"):
        report_layout_change(saved, train, 1, DataPosition(0, 32))
    assert "the checkpoint was written on 2 rank(s), this run has 1: continuing at row 32 of epoch 0" in caplog.text
    assert ("the global batch changes from 8 rows per step (the checkpoint's) to 4 (micro_batch_size 4 x grad_accum 1 "
            "x world size 1)") in caplog.text
    assert "train.grad_accum=2 keeps 8 (train.global_batch_size=8 checks it)" in caplog.text
    caplog.clear()
    train.grad_accum = 2
    report_layout_change(saved, train, 1, DataPosition(0, 32))
    assert "global batch" not in caplog.text


def test_a_zero_checkpoint_that_cannot_be_converted_is_refused_naming_it_and_the_command(tmp_path):
    checkpoint = tmp_path / "step-4"
    (checkpoint / "deepspeed").mkdir(parents=True)  # no ZeRO files in it
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError) as error:
            universal_checkpoint.convert_once(checkpoint, "deepspeed", 2, torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    message = str(error.value)
    assert f"the DeepSpeed checkpoint {checkpoint} was written on 2 rank(s), this run has 1" in message
    assert "the checkpoint itself is untouched. Resume it on 2 rank(s) (launcher.nproc_per_node)" in message
    assert (f"python -m deepspeed.checkpoint.ds_to_universal --input_folder {checkpoint / 'deepspeed'} "
            f"--output_folder {checkpoint / 'universal' / 'deepspeed'} --inject_missing_state") in message
    assert sorted(p.name for p in checkpoint.iterdir()) == ["deepspeed"]  # no half-converted directory left


# -- whole runs: the uninterrupted run's losses on every world size -----------------------------------------------

# Full fine-tuning: FSDP shards the weights and Adam's moments, the hardest state to reshard. The schedule is
# constant after its warm-up so that each leg, which stops at its own max_steps, keeps the uninterrupted run's rates.
RUN = ["method=full", "train.seq_len=64", "train.log_interval=1", "train.eval_interval=0", "optim.lr=3e-3",
       "optim.warmup_steps=2", "optim.scheduler=constant", "train.save_interval=4", "train.keep_checkpoints=0",
       "train.eval_max_batches=1", "train.save_final=false"]


def layout(workers: int, micro_batch_size: int, grad_accum: int) -> list:
    """8 rows per step whatever the world size: the global batch the uninterrupted run has."""
    assert workers * micro_batch_size * grad_accum == 8
    return [f"launcher.cpu_workers={workers}", f"train.micro_batch_size={micro_batch_size}",
            f"train.grad_accum={grad_accum}"]


def resume_from_step_4(uninterrupted, output_dir):
    """A run directory holding only the uninterrupted run's checkpoint of step 4 (written on 2 ranks)."""
    shutil.copytree(uninterrupted / "checkpoints" / "step-4", output_dir / "checkpoints" / "step-4")


def assert_same_losses(resumed, uninterrupted, steps):
    expected, got = train_losses(uninterrupted), train_losses(resumed)
    assert sorted(got) == list(steps)
    for step in steps:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])  # DCP reshards FSDP's shards; DDP's replicas load whole
def test_resumes_on_1_then_4_then_2_ranks_with_the_uninterrupted_losses(tmp_path, strategy):
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    run_shardtune("train", *RUN, f"strategy={strategy}", "train.max_steps=16", *layout(2, 4, 1),
                  f"output_dir={uninterrupted}")
    resume_from_step_4(uninterrupted, resumed)
    # Each leg resumes the previous leg's newest checkpoint: 2 -> 1, 1 -> 4 (another micro batch too), 4 -> 2.
    for max_steps, workers, (micro_batch_size, grad_accum), saved_on in [(8, 1, (4, 2), 2), (12, 4, (2, 1), 1),
                                                                         (16, 2, (2, 2), 4)]:
        result = run_shardtune("train", *RUN, f"strategy={strategy}", f"train.max_steps={max_steps}",
                               *layout(workers, micro_batch_size, grad_accum), f"output_dir={resumed}", "resume=auto")
        row = (max_steps - 4) * 8
        assert (f"the checkpoint was written on {saved_on} rank(s), this run has {workers}: continuing at row {row} "
                f"of epoch 0's order") in result.stderr
        assert "global batch changes" not in result.stderr
        state = json.loads((resumed / "checkpoints" / f"step-{max_steps}" / "trainer_state.json").read_text())
        assert (state["world_size"], state["data_epoch"], state["data_rows"]) == (workers, 0, max_steps * 8)
    assert_same_losses(resumed, uninterrupted, range(5, 17))
    assert [row["step"] for row in read_metrics(resumed) if "loss" in row] == list(range(5, 17))


def test_zero2_resumes_on_1_rank_through_a_universal_checkpoint_keeping_the_original(tmp_path):
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    run_shardtune("train", *RUN, "strategy=zero2", "train.max_steps=8", *layout(2, 4, 1), f"output_dir={uninterrupted}")
    resume_from_step_4(uninterrupted, resumed)
    original = resumed / "checkpoints" / "step-4" / "deepspeed"
    before = {path.name: path.read_bytes() for path in original.iterdir()}
    result = run_shardtune("train", *RUN, "strategy=zero2", "train.max_steps=8", *layout(1, 4, 2),
                           f"output_dir={resumed}", "resume=auto")
    universal = resumed / "checkpoints" / "step-4" / "universal"
    assert (f"the DeepSpeed checkpoint {resumed / 'checkpoints' / 'step-4'} was written on 2 rank(s), this run has 1: "
            f"converting it to a universal checkpoint in {universal}") in result.stderr
    assert (universal / "latest_universal").read_text() == "deepspeed"
    assert {path.name: path.read_bytes() for path in original.iterdir()} == before  # the original is untouched
    assert_same_losses(resumed, uninterrupted, range(5, 9))
