"""Grid sweeps on CPU with the tiny model: every trial is a real shardtune run (torchrun, gloo workers).

A 4-trial grid (2 workers per trial) gives 4 run directories and a 4-row table whose objectives are the
trials' own final validation losses; running it again skips every trial (and another objective measures them
anew). A trial whose learning rate makes the loss diverge is recorded as failed while the trial beside it (two at
once) completes.
"""

import pytest
from conftest import final_val_loss, run_shardtune
from sweep_helpers import TRIAL, results, trial_record


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
    # Another objective: the finished runs are measured anew, not trained again.
    run_shardtune("train", *command, "sweep.objective=tokens_per_second")
    rows = results(sweep_dir)
    assert {row["objective"] for row in rows} == {"tokens_per_second"}
    assert [float(row["value"]) for row in rows] == sorted((float(row["tokens_per_second"]) for row in rows), reverse=True)
    assert {run: (run / "metrics.jsonl").stat().st_mtime_ns for run in sweep_dir.glob("trial-*")} == before


def test_a_diverging_trial_is_recorded_as_failed_and_the_other_completes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_shardtune("train", "-m", *TRIAL, "optim.lr=3e-3,1e35", "sweep.parallel_trials=2", "logger=wandb",
                  f"hydra.sweep.dir={sweep_dir}")
    rows = results(sweep_dir)
    assert [(row["optim.lr"], row["status"]) for row in rows] == [("0.003", "completed"), ("1e+35", "failed")]
    assert rows[1]["value"] == "" and "FloatingPointError: gradient norm is nan at step 2" in rows[1]["error"]
    assert "failed: FloatingPointError" in (sweep_dir / "results.md").read_text()
    # Both trials ran at once: each started before the other ended.
    spans = [(record["started_at"], record["ended_at"]) for record in map(trial_record, sweep_dir.glob("trial-*"))]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans
    # Each trial is its own W&B run, named after the trial and grouped under the sweep.
    from wandb_reader import read_wandb_records
    for number in (0, 1):
        run_file = next((sweep_dir / f"trial-{number}" / "wandb").glob("offline-run-*/run-*.wandb"))
        run = next(record.run for record in read_wandb_records(run_file) if record.HasField("run"))
        assert (run.run_group, run.display_name) == (sweep_dir.name, f"{sweep_dir.name}/trial-{number}")
