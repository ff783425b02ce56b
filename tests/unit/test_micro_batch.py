"""train.micro_batch_size=auto: the launcher's choice from the memory estimate (shardtune/launcher/micro_batch.py) and
the workers' trial step that halves it on running out of memory (shardtune/trainer/micro_batch_trial.py).

GPUs are simulated with launcher.gpu_memory_gib, planned with check_devices=False as on a login node; the trial's
logic runs with a fake step that runs out of memory above a size, and a fake agreement between ranks.
"""
import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_cfg

from shardtune.data.batches import DataPosition
from shardtune.errors import ConfigError
from shardtune.launcher.fit import check_memory
from shardtune.launcher.memory import GIB, estimate_memory
from shardtune.launcher.micro_batch import CPU_MAX_MICRO_BATCH, fit_to_data
from shardtune.launcher.torchrun import plan_launch
from shardtune.trainer.micro_batch_trial import confirm_micro_batch, missing_optimizer_state_bytes, next_smaller
from shardtune.trainer.checkpoint import data_position

LORA_1B = ("model=llama3.2-1b", "method=lora", "strategy=ddp")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def planned(tmp_path, *overrides, gpus: int = 1, gpu_gib=None, **values):
    """A run planned for `gpus` GPUs of `gpu_gib` GiB (this machine may have none), micro_batch_size=auto."""
    cfg = compose_cfg(*overrides, values={"launcher.device": "cuda", "launcher.nproc_per_node": gpus,
                                          "launcher.gpu_memory_gib": gpu_gib, "launcher.host_memory_gib": 2048,
                                          "train.seq_len": 2048, "train.micro_batch_size": "auto",
                                          "output_dir": str(tmp_path / "run"), **values})
    return plan_launch(cfg, check_devices=False)


def peak_gib(plan, micro_batch: int, grad_accum: int = 1) -> float:
    cfg = plan.config.copy()
    cfg.train.micro_batch_size, cfg.train.grad_accum = micro_batch, grad_accum
    return estimate_memory(cfg, plan.world_size).peak_per_gpu / GIB


# --------------------------------------------------------------------------- the launcher's choice


def test_auto_picks_the_largest_power_of_two_whose_estimate_fits(tmp_path, no_gpu):
    probe = planned(tmp_path, *LORA_1B, gpu_gib=1000)
    between = (peak_gib(probe, 4) + peak_gib(probe, 8)) / 2  # a GPU that holds micro batch 4 and not 8
    plan = planned(tmp_path, *LORA_1B, gpu_gib=between)
    assert plan.config.train.micro_batch_size == 4 and plan.config.train.grad_accum == 1
    assert plan.config.train.micro_batch_trial  # the workers confirm it on the GPU
    assert plan.micro_batch.describe() == (f"auto -> 4 (estimated peak {peak_gib(probe, 4):.1f} of {between:.1f} GiB "
                                           f"per GPU; a trial step on the GPU confirms it)")


def test_auto_stops_at_its_largest_on_a_big_gpu(tmp_path, no_gpu):
    plan = planned(tmp_path, "model=tiny", gpu_gib=1000)
    assert plan.config.train.micro_batch_size == 128
    assert "128 is the largest auto tries" in plan.micro_batch.describe()


def test_auto_with_a_global_batch_chooses_grad_accum_to_keep_it(tmp_path, no_gpu, caplog):
    probe = planned(tmp_path, *LORA_1B, gpus=2, gpu_gib=1000)
    # 24 sequences over 2 GPUs: 12 per rank, as 12 x 1, 6 x 2, 4 x 3, ...; a GPU that holds 6 and not 12.
    between = (peak_gib(probe, 6, 2) + peak_gib(probe, 12)) / 2
    with caplog.at_level(logging.WARNING, logger="shardtune"):
        plan = planned(tmp_path, *LORA_1B, gpus=2, gpu_gib=between,
                       **{"train.global_batch_size": 24, "train.grad_accum": 3})
    train = plan.config.train
    assert (train.micro_batch_size, train.grad_accum) == (6, 2)
    assert train.micro_batch_size * train.grad_accum * plan.world_size == 24
    assert "train.grad_accum=3 is replaced by 2" in caplog.text
    assert plan.micro_batch.describe().startswith("auto -> 6, grad_accum 2 (train.global_batch_size) (estimated peak")


def test_auto_refuses_a_global_batch_the_world_does_not_divide(tmp_path, no_gpu):
    with pytest.raises(ConfigError) as info:
        planned(tmp_path, *LORA_1B, gpus=4, gpu_gib=80, **{"train.global_batch_size": 10})
    assert info.value.key == "train.micro_batch_size"
    assert "train.global_batch_size 10: it must be a multiple of the world size 4" in str(info.value)


def test_auto_needs_the_gpus_memory(tmp_path, no_gpu):
    with pytest.raises(ConfigError) as info:
        planned(tmp_path, *LORA_1B, gpu_gib=None)
    assert info.value.key == "train.micro_batch_size"
    assert "set launcher.gpu_memory_gib" in str(info.value)


def test_when_even_one_does_not_fit_the_memory_check_refuses_it_with_the_levers(tmp_path, no_gpu):
    plan = planned(tmp_path, "model=llama3.1-70b", "method=qlora", "strategy=fsdp", gpus=2, gpu_gib=48)
    assert plan.config.train.micro_batch_size == 1 and not plan.micro_batch.verdict.fits
    assert "even 1 does not fit" in plan.micro_batch.describe()
    with pytest.raises(ConfigError) as info:
        check_memory(plan.config, plan.world_size)
    assert info.value.key == "launcher.memory_check"
    assert "train.activation_checkpointing=true" in str(info.value)


def test_cpu_workers_take_auto_up_to_their_cap_with_no_trial(tmp_path, no_gpu):
    cfg = compose_cfg(values={"launcher.device": "cpu", "train.micro_batch_size": "auto",
                              "output_dir": str(tmp_path / "run")})
    plan = plan_launch(cfg)
    assert plan.config.train.micro_batch_size == CPU_MAX_MICRO_BATCH
    assert not plan.config.train.micro_batch_trial
    assert "CPU workers: no GPU memory to fill" in plan.micro_batch.describe()


def test_a_number_is_kept_as_it_is(tmp_path, no_gpu):
    plan = plan_launch(compose_cfg(values={"launcher.device": "cpu", "train.micro_batch_size": 3}))
    assert plan.micro_batch is None and plan.config.train.micro_batch_size == 3
    assert not plan.config.train.micro_batch_trial


@pytest.mark.parametrize("rows, grad_accum, expected", [(1600, 1, 8), (12, 1, 4), (40, 4, 4), (7, 1, 2), (1, 1, 8)])
def test_a_small_train_split_lowers_auto_to_a_power_of_two_it_holds(rows, grad_accum, expected):
    train = SimpleNamespace(micro_batch_size=8, grad_accum=grad_accum, global_batch_size=None)
    fit_to_data(train, rows, world_size=2)
    assert train.micro_batch_size == expected  # 1 row for 2 ranks: nothing helps, validate_split_sizes says so


# --------------------------------------------------------------------------- the workers' trial


def fake_step(fits_up_to: int):
    tried = []

    def step(size: int) -> None:
        tried.append(size)
        if size > fits_up_to:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
    return step, tried


def test_the_trial_halves_until_the_step_fits():
    step, tried = fake_step(fits_up_to=5)
    assert confirm_micro_batch(16, 16, step, any_rank_failed=lambda failed: failed) == 4
    assert tried == [16, 8, 4]


def test_the_trial_goes_by_the_rank_that_fails():
    # This rank fits 8; another rank (rank 0's extra memory) fits only 2: every rank goes on with 2.
    step, tried = fake_step(fits_up_to=8)
    other_rank = fake_step(fits_up_to=2)[0]

    def any_rank_failed(failed: bool) -> bool:
        try:
            other_rank(tried[-1])
        except torch.cuda.OutOfMemoryError:
            return True
        return failed
    assert confirm_micro_batch(8, 8, step, any_rank_failed) == 2
    assert tried == [8, 4, 2]


def test_the_trial_keeps_grad_accum_whole():
    step, tried = fake_step(fits_up_to=3)
    # 12 rows per step and rank: 12 x 1 -> 6 x 2 -> 3 x 4.
    assert confirm_micro_batch(12, 12, step, lambda failed: failed) == 3
    assert tried == [12, 6, 3]
    assert [next_smaller(size, 10) for size in (10, 5, 2, 1)] == [5, 2, 1, None]


def test_the_trial_gives_up_at_one_naming_the_key():
    step, _ = fake_step(fits_up_to=0)
    with pytest.raises(RuntimeError, match=r"^train.micro_batch_size: the trial step ran out of GPU memory at micro "
                                           r"batch 1"):
        confirm_micro_batch(2, 2, step, lambda failed: failed)


def test_the_stand_in_is_the_optimizer_states_not_yet_allocated():
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    assert missing_optimizer_state_bytes(optimizer, torch.device("cpu")) == 2 * (4 * 3 + 3) * 4  # two fp32 moments
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    assert missing_optimizer_state_bytes(optimizer, torch.device("cpu")) == 0


def test_a_resume_at_another_micro_batch_reads_on_from_the_same_row():
    # Checkpoints from before the data position was recorded: each rank's micro-batches done, at the recorded micro
    # batch (a trial may have chosen another) and world size; 10 micro-batches of 8 on 2 ranks are 160 rows.
    def position(state):  # on 2 ranks at micro batch 4, 1000 training rows
        return data_position(state, 1000, micro_batch_size=4, world_size=2)
    old = {"micro_batches_done": 10, "micro_batch_size": 8, "world_size": 2}
    assert position(old) == DataPosition(0, 160)
    assert position({"micro_batches_done": 10}) == DataPosition(0, 80)  # size not recorded
    # 1000 rows make 62 global micro-batches of 16 an epoch: 70 done are all of epoch 0 and 8 of epoch 1.
    assert position({**old, "micro_batches_done": 70}) == DataPosition(1, 8 * 16)
    assert position({"data_epoch": 3, "data_rows": 24}) == DataPosition(3, 24)


def test_under_deepspeed_auto_has_no_trial_and_says_so(tmp_path, no_gpu):
    plan = planned(tmp_path, "model=llama3.2-1b", "method=full", "strategy=zero2", gpus=2, gpu_gib=80)
    assert not plan.config.train.micro_batch_trial
    assert "no trial step: DeepSpeed's engine fixes the micro batch" in plan.micro_batch.describe()


def test_a_trial_asked_for_where_it_cannot_run_is_ignored_with_a_warning(tmp_path, no_gpu, caplog):
    with caplog.at_level(logging.WARNING, logger="shardtune"):
        plan_launch(compose_cfg(values={"launcher.device": "cpu", "train.micro_batch_trial": True}))
    assert "train.micro_batch_trial is ignored: CPU workers have no GPU memory to try" in caplog.text
