"""Early stopping of hopeless trials through Optuna's pruners (sweep.pruner, hydra/sweeper=optuna).

The sweeper keeps its study in <sweep_dir>/optuna.db; rank 0 of each trial opens the same study, reports the
validation loss of every train.eval_interval to the trial the sweeper asked for, and asks the pruner whether
to go on. A pruned run stops after that evaluation and leaves PRUNED in its run directory.
"""
from pathlib import Path

from ..validation import ConfigError

PRUNERS = ("none", "median", "successive_halving", "hyperband")
PRUNED_MARKER = "PRUNED"
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


def make_pruner(sweep):
    import optuna
    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner_startup_trials,
                                           n_warmup_steps=sweep.pruner_warmup_steps)
    if sweep.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.HyperbandPruner()


class TrialPruning:
    """Rank 0's link to the trial's Optuna study."""

    def __init__(self, sweep):
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=sweep.optuna_study, storage=sweep.optuna_storage,
                                  pruner=make_pruner(sweep))
        # Optuna has no public lookup of a trial by number for a process other than the one that asked for it.
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, sweep.optuna_trial)
        self.trial = optuna.trial.Trial(study, trial_id)

    def should_prune(self, step: int, val_loss: float) -> bool:
        self.trial.report(val_loss, step)
        return self.trial.should_prune()


def write_marker(output_dir, step: int, val_loss: float) -> None:
    Path(output_dir, PRUNED_MARKER).write_text(f"pruned at step {step}, validation loss {val_loss:.6g}\n")
