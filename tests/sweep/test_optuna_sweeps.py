"""An Optuna sweep on CPU with the tiny model: 6 trials (each a real shardtune run) with a median pruner report
their best trial, prune the hopeless ones, and a re-run with one more trial runs only that one.
"""
import math
import sqlite3

import pytest
from conftest import final_val_loss, read_metrics, run_shardtune
from sweep_helpers import TRIAL, results, trial_record


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
