"""Sweep pieces that need no training run: naming, objectives, error extraction, the report, parallelism, and
settings every trial shares being refused before any trial starts."""
import csv
import math

import pytest
from conftest import compose_cfg, run_shardtune

from shardtune.cluster import slurm
from shardtune.sweep.naming import default_sweep_dir
from shardtune.sweep.objective import direction_of, worst_value
from shardtune.sweep.parallel import parallel_trials
from shardtune.sweep.records import TrialRecord
from shardtune.sweep.report import collect, write_report
from shardtune.sweep.trial import error_summary
from shardtune.errors import ConfigError


def test_the_same_command_names_the_same_sweep_directory():
    argv = ["-m", "optim.lr=1e-4,3e-4", "method.rank=8,16", "model=tiny"]
    name = default_sweep_dir(argv)
    assert name.startswith("sweeps/lr-rank-") and name == default_sweep_dir(list(reversed(argv)))
    # How the sweep runs (trials at once, retries, the sampler's budget) does not make it another sweep.
    assert default_sweep_dir(argv + ["sweep.retry_failed=true", "hydra.sweeper.n_trials=9"]) == name
    assert default_sweep_dir(argv[:-1] + ["model=tiny_base"]) != name
    assert default_sweep_dir(["-m", "hydra/sweeper=optuna", "optim.lr=tag(log, interval(1e-5, 1e-3))"]).startswith("sweeps/lr-")


def test_objectives_and_their_directions():
    assert direction_of("val_loss") == "minimize" and direction_of("eval/exact_match") == "maximize"
    assert worst_value("val_loss") == math.inf and worst_value("tokens_per_second") == -math.inf
    with pytest.raises(ConfigError, match="sweep.objective.*'eval/bleu' is not one of"):
        direction_of("eval/bleu")


def test_the_error_of_a_failed_trial_is_the_workers_exception():
    lines = ["[rank0]: Traceback (most recent call last):", "[rank0]: torch.OutOfMemoryError: CUDA out of memory.",
             "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "shardtune.trainer.worker FAILED"]
    assert error_summary(lines) == "torch.OutOfMemoryError: CUDA out of memory."
    assert error_summary(["nothing", "to see"]) == ""


def make_trial(sweep_dir, number, lr, status, value, error=None):
    run_dir = sweep_dir / f"trial-{number}"
    run_dir.mkdir(parents=True)
    overrides = ["model=tiny", f"optim.lr={lr}", "sweep.parallel_trials=2"]
    TrialRecord(number, overrides, "val_loss", status=status, value=value, tokens_per_second=1000.0 + number,
                peak_memory_gib=1.5, error=error, run_dir=str(run_dir),
                params={"model": "tiny", "optim.lr": str(lr)}).save(run_dir)


def test_report_ranks_trials_and_gives_the_best_as_a_command(tmp_path):
    make_trial(tmp_path, 0, 1e-3, "completed", 2.5)
    make_trial(tmp_path, 1, 1e-2, "failed", None, error="FloatingPointError: loss is nan at step 3")
    make_trial(tmp_path, 2, 3e-4, "completed", 2.1)
    make_trial(tmp_path, 3, 1e-5, "pruned", 3.0)
    assert [record.number for record in collect(tmp_path)] == [2, 0, 3, 1]
    text = write_report(tmp_path)
    assert "Trials: 4 (2 completed, 1 pruned, 1 failed)" in text
    assert "| 2 | optim.lr=0.0003 | 2.1 | 1,002 | 1.50 | completed |" in text  # only the swept key is shown
    assert "| 1 | optim.lr=0.01 |  | 1,001 | 1.50 | failed: FloatingPointError: loss is nan at step 3 |" in text
    assert "    shardtune train model=tiny optim.lr=0.0003\n" in text  # the sweep's own settings left out
    with open(tmp_path / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["trial"] for row in rows] == ["2", "0", "3", "1"] and rows[0]["optim.lr"] == "0.0003"
    assert "model" not in rows[0]  # the same in every trial: not a swept column
    assert (tmp_path / "objective.png").stat().st_size > 0


def test_report_command_names_a_directory_without_trials(tmp_path):
    result = run_shardtune("sweep", "report", str(tmp_path), check=False)
    assert result.returncode != 0 and "holds no trials" in result.stderr


def test_trials_in_flight(tmp_path):
    cpu = compose_cfg("launcher.device=cpu")
    assert parallel_trials(cpu, 6) == 1  # CPU trials share the cores: one at a time unless asked
    cpu.sweep.parallel_trials = 3
    assert parallel_trials(cpu, 6) == 3 and parallel_trials(cpu, 2) == 2
    on_slurm = compose_cfg("cluster=slurm")
    assert parallel_trials(on_slurm, 6) == 6 and parallel_trials(on_slurm, 500) == 64
    cpu.sweep.parallel_trials = 0
    with pytest.raises(ConfigError, match="sweep.parallel_trials"):
        parallel_trials(cpu, 6)


def test_settings_every_trial_shares_are_refused_before_any_trial_starts(tmp_path):
    for overrides, key in ((["sweep.objective=bleu"], "sweep.objective"),
                           (["sweep.pruner=median"], "sweep.pruner"),  # pruning needs the Optuna sweeper
                           (["hydra/sweeper=optuna", "sweep.pruner=median", "train.eval_interval=0"], "train.eval_interval")):
        sweep_dir = tmp_path / key
        result = run_shardtune("train", "-m", "optim.lr=1e-3,3e-3", *overrides, f"hydra.sweep.dir={sweep_dir}",
                               check=False)
        assert result.returncode != 0 and key in result.stderr, result.stderr[-2000:]
        assert not list(sweep_dir.glob("trial-*"))


def test_batch_script_picks_a_free_rendezvous_port_unless_given(tmp_path):
    cfg = compose_cfg("cluster=slurm", f"output_dir={tmp_path}")
    script = slurm.batch_script(cfg, tmp_path / "config.yaml", "/usr/bin/python3")
    assert "export RDZV_PORT=$(/usr/bin/python3 -c 'import socket;" in script
    cfg.cluster.rdzv_port = 29555
    assert "export RDZV_PORT=29555\n" in slurm.batch_script(cfg, tmp_path / "config.yaml", "/usr/bin/python3")


def test_parallel_gpu_trials_each_hold_their_own_gpus(tmp_path, monkeypatch):
    """8 GPUs, 2 per trial: 4 trials at once, and trials in flight together never share a GPU."""
    import logging

    import torch

    from shardtune.sweep.parallel import device_slot
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = compose_cfg("launcher.device=cuda", "launcher.nproc_per_node=2")
    assert parallel_trials(cfg, 10) == 4 and parallel_trials(cfg, 3) == 3
    log = logging.getLogger("test")
    with device_slot(tmp_path, cfg, log) as first, device_slot(tmp_path, cfg, log) as second:
        assert (first, second) == ({"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"})
    with device_slot(tmp_path, cfg, log) as again:  # released when the trials ended
        assert again == {"CUDA_VISIBLE_DEVICES": "0,1"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # the node's share of a larger machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with device_slot(tmp_path, cfg, log) as first, device_slot(tmp_path, cfg, log) as second:
        assert (first, second) == ({"CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"})
    cfg.sweep.parallel_trials = 3  # 3 x 2 GPUs do not fit on 4
    with pytest.raises(ConfigError, match="sweep.parallel_trials: 3 trials of 2 GPU"):
        parallel_trials(cfg, 6)
