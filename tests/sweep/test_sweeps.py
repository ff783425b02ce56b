"""Sweeps on CPU with the tiny model: every trial is a real shardtune run (torchrun, gloo workers).

A 4-trial grid (2 workers per trial) gives 4 run directories and a 4-row table whose objectives are the
trials' own final validation losses; running it again skips every trial. A trial whose learning rate makes the
loss diverge is recorded as failed while the trial beside it (two at once) completes. An Optuna sweep of 6
trials with a median pruner reports its best trial, prunes the hopeless ones, and a re-run with one more trial
runs only that one.
"""
import csv
import json
import math
import sqlite3

import pytest
from conftest import final_val_loss, read_metrics, run_shardtune

pytestmark = pytest.mark.dist

TRIAL = ["train.max_steps=4", "train.seq_len=64", "train.micro_batch_size=4", "train.log_interval=2",
         "train.eval_interval=2", "train.eval_max_batches=4", "optim.warmup_steps=0"]


def results(sweep_dir) -> list:
    with open(sweep_dir / "results.csv") as handle:
        return list(csv.DictReader(handle))


def trial_record(run_dir) -> dict:
    return json.loads((run_dir / "trial.json").read_text())


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("grid") / "sweep"
    command = ["-m", *TRIAL, "launcher.cpu_workers=2", "optim.lr=1e-3,3e-3", "method.rank=4,8",
               f"hydra.sweep.dir={sweep_dir}"]
    return sweep_dir, command, run_shardtune("train", *command)


def test_grid_gives_a_run_per_trial_and_a_table_of_their_objectives(grid):
    sweep_dir, _, result = grid
    runs = sorted(sweep_dir.glob("trial-*"))
    assert [run.name for run in runs] == ["trial-0", "trial-1", "trial-2", "trial-3"]
    rows = results(sweep_dir)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"completed"}
    for row in rows:  # the objective is the trial's own final validation loss, from its metrics.jsonl
        assert float(row["value"]) == pytest.approx(final_val_loss(row["run_dir"]), rel=1e-12)
        assert float(row["tokens_per_second"]) > 0 and float(row["peak_memory_gib"]) > 0
    values = [float(row["value"]) for row in rows]
    assert values == sorted(values)  # best first
    assert {(row["optim.lr"], row["method.rank"]) for row in rows} == {("0.001", "4"), ("0.001", "8"),
                                                                        ("0.003", "4"), ("0.003", "8")}
    for run in runs:  # each trial is a whole run: two workers, its own directory and W&B group
        config = (run / "config.yaml").read_text()
        assert "nproc_per_node: 2" in config and f"group: {sweep_dir.name}" in config
        assert (run / "final" / "adapter_model.safetensors").exists()
    best = rows[0]
    table = (sweep_dir / "results.md").read_text()
    assert table.count("| completed |") == 4
    command = f"shardtune train {' '.join(trial_record(sweep_dir / ('trial-' + best['trial']))['overrides'])}"
    assert command in table and command in result.stdout
    assert (sweep_dir / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_running_the_sweep_again_skips_finished_trials(grid):
    sweep_dir, command, _ = grid
    before = {run: (run / "metrics.jsonl").stat().st_mtime_ns for run in sweep_dir.glob("trial-*")}
    again = run_shardtune("train", *command)
    assert again.stdout.count("in an earlier run of this sweep") + again.stderr.count("in an earlier run of this sweep") == 4
    assert {run: (run / "metrics.jsonl").stat().st_mtime_ns for run in sweep_dir.glob("trial-*")} == before
    assert len(results(sweep_dir)) == 4


def test_a_diverging_trial_is_recorded_as_failed_and_the_other_completes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_shardtune("train", "-m", *TRIAL, "optim.lr=3e-3,1e35", "sweep.parallel_trials=2",
                  f"hydra.sweep.dir={sweep_dir}")
    rows = results(sweep_dir)
    assert [(row["optim.lr"], row["status"]) for row in rows] == [("0.003", "completed"), ("1e+35", "failed")]
    assert rows[1]["value"] == "" and "FloatingPointError: loss is nan at step 2" in rows[1]["error"]
    assert "failed: FloatingPointError" in (sweep_dir / "results.md").read_text()
    # Both trials ran at once: each started before the other ended.
    spans = [(record["started_at"], record["ended_at"]) for record in map(trial_record, sweep_dir.glob("trial-*"))]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans


OPTUNA = ["hydra/sweeper=optuna", "hydra.sweeper.sampler.seed=3", "optim.lr=tag(log, interval(1e-5, 1e-2))",
          "method.rank=choice(4,8)", "sweep.pruner=median", "sweep.pruner_startup_trials=1", "launcher.cpu_workers=1"]


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("optuna") / "sweep"
    command = ["-m", *TRIAL, *OPTUNA, f"hydra.sweep.dir={sweep_dir}"]
    return sweep_dir, command, run_shardtune("train", *command, "hydra.sweeper.n_trials=6")


def study_trials(sweep_dir) -> list:
    with sqlite3.connect(sweep_dir / "optuna.db") as db:
        return db.execute("select number, state from trials order by number").fetchall()


def test_optuna_sweep_runs_its_trials_and_reports_the_best(optuna_sweep):
    sweep_dir, _, result = optuna_sweep
    rows = results(sweep_dir)
    assert len(rows) == 6 and [number for number, _ in study_trials(sweep_dir)] == list(range(6))
    assert sorted(run.name for run in sweep_dir.glob("trial-*")) == [f"trial-{n}" for n in range(6)]
    completed = [row for row in rows if row["status"] == "completed"]
    best = min(completed, key=lambda row: float(row["value"]))
    assert rows[0] == best and f"Best trial: {best['trial']} (val_loss" in result.stdout
    assert float(best["value"]) == pytest.approx(final_val_loss(best["run_dir"]))
    assert f"Best value: {best['value']}" in result.stderr + result.stdout  # the plugin agrees
    for row in rows:  # Optuna's trial N is trial-N, with the overrides Optuna asked for
        assert f"optim.lr={row['optim.lr']}" in trial_record(sweep_dir / f"trial-{row['trial']}")["overrides"]


def test_hopeless_trials_are_pruned_after_an_evaluation(optuna_sweep):
    sweep_dir, _, _ = optuna_sweep
    pruned = [row for row in results(sweep_dir) if row["status"] == "pruned"]
    assert pruned, "the seeded sweep has trials far worse than the first at step 2"
    for row in pruned:
        metrics = read_metrics(row["run_dir"])
        assert metrics[-1]["step"] < 4 and "val/loss" in metrics[-1]  # stopped right after an evaluation
        assert float(row["value"]) == pytest.approx(metrics[-1]["val/loss"])
        assert (sweep_dir / f"trial-{row['trial']}" / "PRUNED").exists()
        assert not (sweep_dir / f"trial-{row['trial']}" / "final").exists()


def test_rerunning_an_optuna_sweep_runs_only_the_trials_still_to_go(optuna_sweep):
    sweep_dir, command, _ = optuna_sweep
    before = {run.name for run in sweep_dir.glob("trial-*")}
    result = run_shardtune("train", *command, "hydra.sweeper.n_trials=7")
    assert "6 finished trial(s) from an earlier run of this sweep; 1 to go" in result.stderr + result.stdout
    assert {run.name for run in sweep_dir.glob("trial-*")} - before == {"trial-6"}
    assert len(study_trials(sweep_dir)) == 7 and len(results(sweep_dir)) == 7
    assert math.isfinite(float(trial_record(sweep_dir / "trial-6")["value"]))
