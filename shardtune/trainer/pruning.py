"""A sweep trial's link to its Optuna study, from inside the workers (sweep.pruner; the sweep's side is
sweep/pruning.py): rank 0 reports each validation loss to the trial the sweeper asked for and asks the pruner
whether to go on. optuna is imported only by runs that prune."""
from pathlib import Path

from ..run_dir import PRUNED_MARKER

PRUNERS = ("none", "median", "successive_halving", "hyperband")


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
