"""Hyperparameter sweeps: `shardtune train -m ...` runs each trial as a whole shardtune run.

Hydra does the sweeping: its basic sweeper for grids, the Optuna sweeper plugin (hydra/sweeper=optuna,
hydra_plugins/shardtune_sweeps/optuna_sweeper.py adds a persistent study, pruning and re-runs), and a launcher
built on Hydra's joblib launcher that runs several trials at once where the devices allow. This package holds what
a trial does (trial.py), what it reports (objective.py, records.py), and the sweep's report (report.py).

    <sweep_dir>/trial-N/            a run directory like any other (config.yaml, metrics.jsonl, final/, ...)
    <sweep_dir>/trial-N/trial.json  the trial's record: overrides, status, objective, error
    <sweep_dir>/optuna.db           the Optuna study (hydra/sweeper=optuna)
    <sweep_dir>/results.csv, results.md, objective.png   written at the end, or by `shardtune sweep report`
"""
