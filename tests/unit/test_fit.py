"""Unit tests of the memory check (shardtune/launcher/fit.py): `shardtune train` refuses a run that cannot fit
before any worker starts, `launcher.memory_check=false` overrides it, and `plan` prints the verdict.

GPUs are simulated with launcher.gpu_memory_gib (planned with check_devices=False, as on a login node), host RAM
with launcher.host_memory_gib, so that every test runs the same on this CPU machine as on a GPU one.
"""
import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_cfg

from shardtune.errors import ConfigError
from shardtune.launcher.fit import check_memory, fit_report, gpu_memory, judge, machine_capacity
from shardtune.launcher.launch import prepare_run
from shardtune.launcher.memory import GIB, estimate_memory
from shardtune.launcher.torchrun import plan_launch

HOST_BIG_ENOUGH = 2048  # GiB: leaves the GPU as the only limit


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def planned_for_gpus(tmp_path, *overrides, gpus: int, gpu_gib, host_gib=HOST_BIG_ENOUGH, **values):
    """A run planned for `gpus` GPUs of `gpu_gib` GiB on this machine, which may have none."""
    cfg = compose_cfg(*overrides, values={"launcher.device": "cuda", "launcher.nproc_per_node": gpus,
                                          "launcher.gpu_memory_gib": gpu_gib, "launcher.host_memory_gib": host_gib,
                                          "output_dir": str(tmp_path / "run"), **values})
    return plan_launch(cfg, check_devices=False)


QLORA_70B = ("model=llama3.1-70b", "method=qlora", "strategy=fsdp")


def refusal(plan) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_memory(plan.config, plan.world_size)
    return info.value


def test_a_run_that_cannot_fit_is_refused_naming_the_numbers_and_what_would_fit(tmp_path, no_gpu):
    plan = planned_for_gpus(tmp_path, *QLORA_70B, gpus=2, gpu_gib=48)
    estimate = estimate_memory(plan.config, 2)
    error = refusal(plan)
    message = str(error)
    assert error.key == "launcher.memory_check"
    assert f"peak {estimate.peak_per_gpu / GIB:.1f} of 48.0 GiB per GPU (launcher.gpu_memory_gib), world size 2" \
        in message
    assert "what would fit, each estimated again:" in message
    assert "train.activation_checkpointing=true " in message  # 70B QLoRA on 2 x 48 GiB fits with checkpointing
    assert "train.micro_batch_size=" in message
    assert "launcher.memory_check=false starts it anyway" in message
    assert not (tmp_path / "run").exists()


def test_each_alternative_is_estimated_again(tmp_path, no_gpu):
    plan = planned_for_gpus(tmp_path, *QLORA_70B, gpus=2, gpu_gib=48)
    checkpointed = planned_for_gpus(tmp_path, *QLORA_70B, gpus=2, gpu_gib=48,
                                    **{"train.activation_checkpointing": True})
    peak = estimate_memory(checkpointed.config, 2).peak_per_gpu
    line = next(line for line in str(refusal(plan)).splitlines()
                if line.strip().startswith("train.activation_checkpointing=true "))
    assert f"peak {peak / GIB:.1f} GiB per GPU" in line
    check_memory(checkpointed.config, 2)  # and it is not refused


def test_more_gpus_names_the_smallest_world_that_fits(tmp_path, no_gpu):
    cfg = planned_for_gpus(tmp_path, "model=llama3.1-70b", "method=lora", "strategy=fsdp", gpus=2, gpu_gib=48,
                           **{"train.activation_checkpointing": True}).config
    report = fit_report(cfg, 2)
    more = next(line for line in report.splitlines() if "launcher.nproc_per_node=" in line)
    world = int(more.split("launcher.nproc_per_node=")[1].split()[0])
    assert 2 < world <= 8
    assert judge(cfg, world).fits and not judge(cfg, world - 1).fits  # one node: the world is its workers


def test_several_changes_are_named_together_when_none_fits_alone(tmp_path, no_gpu):
    # 70B LoRA on 2 x 48 GiB: 4-bit weights alone leave too many activations, checkpointing alone too many weights,
    # and 64 GiB of host RAM cannot take the offloaded 16-bit base.
    plan = planned_for_gpus(tmp_path, "model=llama3.1-70b", "method=lora", "strategy=fsdp", gpus=2, gpu_gib=48,
                            host_gib=64)
    message = str(refusal(plan))
    assert "train.activation_checkpointing=true method=qlora " in message


def test_ddp_is_offered_sharding_not_more_gpus(tmp_path, no_gpu):
    plan = planned_for_gpus(tmp_path, "model=llama3.1-8b", "method=full", "strategy=ddp", gpus=8, gpu_gib=80)
    message = str(refusal(plan))
    assert "strategy=fsdp " in message and "launcher.nproc_per_node" not in message  # replicas: more GPUs don't help


def test_fsdp_full_on_one_gpu_is_offered_cpu_offload(tmp_path, no_gpu):
    plan = planned_for_gpus(tmp_path, "model=llama3.1-8b", "method=full", "strategy=fsdp", gpus=1, gpu_gib=80)
    assert "strategy.cpu_offload=true " in str(refusal(plan))
    zero = planned_for_gpus(tmp_path, "model=llama3.1-8b", "method=full", "strategy=zero2", gpus=1, gpu_gib=80)
    assert "strategy=zero3_offload " in str(refusal(zero))


def test_memory_check_false_warns_and_starts(tmp_path, no_gpu, caplog):
    plan = planned_for_gpus(tmp_path, *QLORA_70B, gpus=2, gpu_gib=48, **{"launcher.memory_check": False})
    with caplog.at_level(logging.WARNING, logger="shardtune"):
        check_memory(plan.config, plan.world_size)
    assert "launcher.memory_check=false: starting a run that does not fit" in caplog.text
    assert "of 48.0 GiB per GPU" in caplog.text


def test_a_run_just_over_the_gpu_is_started_with_a_warning(tmp_path, no_gpu, caplog):
    plan = planned_for_gpus(tmp_path, *QLORA_70B, gpus=2, gpu_gib=48)
    peak = estimate_memory(plan.config, 2).peak_per_gpu / GIB
    plan.config.launcher.gpu_memory_gib = peak / 1.05  # 5% over: inside the estimate's margin
    with caplog.at_level(logging.WARNING, logger="shardtune"):
        check_memory(plan.config, plan.world_size)
    assert "fits: maybe" in caplog.text and "5% over" in caplog.text


def test_host_ram_is_checked_too(tmp_path, no_gpu):
    # DDP: every rank loads the whole fp32 model into host memory first.
    plan = planned_for_gpus(tmp_path, "model=llama3.1-8b", "method=full", "strategy=ddp", gpus=8, gpu_gib=141,
                            host_gib=128)
    error = refusal(plan)
    assert "host RAM" in str(error) and "of 128.0 GiB per node (launcher.host_memory_gib)" in str(error)


def test_cpu_runs_are_never_refused_for_a_gpu_and_the_tiny_model_fits_the_host(tmp_path, caplog):
    cfg = compose_cfg(values={"launcher.device": "cpu", "output_dir": str(tmp_path / "run")})
    plan = plan_launch(cfg)
    check_memory(plan.config, plan.world_size)  # this machine's RAM
    verdict = judge(plan.config, plan.world_size)
    assert verdict.capacity.gpu_bytes is None and verdict.fits
    assert verdict.summary().startswith("fits: yes, ")
    with caplog.at_level(logging.WARNING, logger="shardtune"):
        plan_launch(compose_cfg(values={"launcher.device": "cpu", "launcher.gpu_memory_gib": 80.0,
                                        "output_dir": str(tmp_path / "run")}))
    assert "launcher.gpu_memory_gib is ignored: the run has CPU workers" in caplog.text


def test_the_launcher_refuses_before_touching_the_data_or_the_run_directory(tmp_path):
    cfg = compose_cfg(values={"launcher.device": "cpu", "launcher.host_memory_gib": 0.5,
                              "data.cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError) as info:
        prepare_run(cfg)
    assert info.value.key == "launcher.memory_check" and "of 0.5 GiB per node (launcher.host_memory_gib)" \
        in str(info.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "config.yaml").exists()


def test_without_a_gpu_or_its_size_the_gpu_check_is_skipped_with_a_note(tmp_path, no_gpu, caplog):
    plan = planned_for_gpus(tmp_path, *QLORA_70B, gpus=2, gpu_gib=None)
    with caplog.at_level(logging.INFO, logger="shardtune"):
        check_memory(plan.config, plan.world_size)
    assert "memory check of the GPUs skipped: no GPU on this machine; set launcher.gpu_memory_gib" in caplog.text
    assert fit_report(plan.config, 2).startswith("fits: unknown, ")


def test_planning_gpus_elsewhere_checks_this_machines_ram_only_when_asked(tmp_path, no_gpu):
    # GPUs this machine lacks are on other machines, with their own RAM.
    plan = planned_for_gpus(tmp_path, "model=llama3.1-8b", "method=full", "strategy=fsdp", "strategy.cpu_offload=true",
                            gpus=1, gpu_gib=141, host_gib=None)
    report = fit_report(plan.config, 1)
    assert report.startswith("fits: yes, peak ") and "GiB per node (not checked: the run's GPUs are not on this " \
        "machine, nor its nodes; set launcher.host_memory_gib to check them)" in report
    plan.config.launcher.host_memory_gib = 64.0  # the offloaded fp32 states of 8B need about 120 GiB
    assert fit_report(plan.config, 1).startswith("fits: no, ")


def test_slurm_checks_the_allocation_only_with_its_sizes(tmp_path, no_gpu):
    cfg = compose_cfg("cluster=slurm", values={"cluster.gpus_per_node": 4, "output_dir": str(tmp_path / "run"),
                                               "model": compose_cfg("model=llama3.1-8b").model})
    capacity = machine_capacity(plan_launch(cfg).config)
    assert capacity.gpu_bytes is None and "launcher.gpu_memory_gib" in capacity.gpu_source
    assert capacity.host_bytes is None and "launcher.host_memory_gib" in capacity.host_source
    cfg.launcher.gpu_memory_gib, cfg.launcher.host_memory_gib = 80.0, 512.0
    capacity = machine_capacity(plan_launch(cfg).config)
    assert (capacity.gpu_bytes, capacity.host_bytes) == (80 * GIB, 512 * GIB)


def test_this_machines_gpu_is_read_from_its_properties(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(total_memory=141 * GIB, name="NVIDIA H200"))
    cfg = compose_cfg(values={"launcher.device": "cuda"})
    assert gpu_memory(cfg) == (141 * GIB, "GPU 0 of this machine, NVIDIA H200")


@pytest.mark.parametrize("key", ["launcher.gpu_memory_gib", "launcher.host_memory_gib"])
def test_memory_sizes_must_be_positive(tmp_path, key):
    with pytest.raises(ConfigError) as info:
        plan_launch(compose_cfg(values={"launcher.device": "cpu", key: 0.0, "output_dir": str(tmp_path)}))
    assert info.value.key == key
