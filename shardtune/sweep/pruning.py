"""Early stopping of hopeless trials through Optuna's pruners (sweep.pruner, hydra/sweeper=optuna): the sweep's
side, which checks the settings and says where the study is.

The sweeper keeps its study in <sweep_dir>/optuna.db; rank 0 of each trial opens the same study
(trainer/pruning.py), reports the validation loss of every train.eval_interval to the trial the sweeper asked for,
and asks the pruner whether to go on. A pruned run stops after that evaluation and leaves PRUNED in its run
directory.
"""
from pathlib import Path

from ..errors import ConfigError
from ..trainer.pruning import PRUNERS

OPTUNA_SWEEPER = "hydra_plugins.shardtune_sweeps.optuna_sweeper.ShardtuneOptunaSweeper"


def study_location(sweeper_cfg, sweep_dir) -> tuple:
    """(storage URL, study name) of a sweep's Optuna study: hydra.sweeper.storage / study_name, or by default a
    SQLite file in the sweep directory named after it (a re-run of the sweep finds it again)."""
    sweep_dir = Path(sweep_dir).absolute()
    return (sweeper_cfg.get("storage") or f"sqlite:///{sweep_dir / 'optuna.db'}",
            sweeper_cfg.get("study_name") or sweep_dir.name)


def check_pruning(cfg, sweeper_target: str) -> None:
    sweep = cfg.sweep
    if sweep.pruner not in PRUNERS:
        raise ConfigError("sweep.pruner", f"{sweep.pruner!r} is not one of {', '.join(PRUNERS)}")
    if sweep.pruner == "none":
        return
    if sweeper_target != OPTUNA_SWEEPER:
        raise ConfigError("sweep.pruner", "pruning needs the Optuna sweeper: add hydra/sweeper=optuna")
    if sweep.objective != "val_loss":
        raise ConfigError("sweep.pruner", f"trials are pruned on their validation loss, so sweep.objective must be "
                                          f"val_loss (it is {sweep.objective})")
    if not cfg.train.eval_interval:
        raise ConfigError("train.eval_interval", "sweep.pruner needs validation losses during training: set "
                                                 "train.eval_interval > 0")
