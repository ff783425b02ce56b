"""The implementation behind hydra/sweeper=optuna (optuna_sweeper.py): Hydra's Optuna sweeper plugin, with what a
sweep of training runs needs on top. Kept out of the plugin scan (a leading underscore), as the plugin does, so that
optuna is imported only by sweeps that use it.

- The study lives in <sweep_dir>/optuna.db (unless hydra.sweeper.storage says otherwise), so the trials' workers
  can report validation losses to Optuna's pruner (sweep.pruner), and running the same sweep again continues it:
  trials that finished count towards hydra.sweeper.n_trials, trials that were cut off are asked again.
- Job numbers follow the study's trial numbers, so trial-N is Optuna's trial N.
- The direction follows sweep.objective; a batch holds sweep.parallel_trials trials (hydra.sweeper.n_jobs wins).
- A failed trial reports the worst value (shardtune.sweep.trial) instead of raising, so the sweep goes on.
"""
import logging
from pathlib import Path

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from optuna.trial import TrialState

from shardtune.sweep.objective import direction_of
from shardtune.sweep.parallel import parallel_trials
from shardtune.sweep.pruning import study_location
from shardtune.errors import ConfigError

log = logging.getLogger(__name__)
INTERRUPTED = "shardtune_interrupted"  # user attribute of a trial that was cut off and asked for again


class ShardtuneOptunaSweeperImpl(OptunaSweeperImpl):
    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.storage, self.study_name = study_location(config.hydra.sweeper, self.sweep_dir)
        wanted = direction_of(config.sweep.objective)
        if self.direction is None:
            self.direction = wanted
        elif self._get_directions() != [wanted]:
            raise ConfigError("hydra.sweeper.direction", f"{self._get_directions()} contradicts sweep.objective="
                                                         f"{config.sweep.objective}, which is {wanted}d")
        self.n_jobs = self.n_jobs or parallel_trials(config, self.n_trials)

    def sweep(self, arguments) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the plugin and this class log what matters
        Path(self.sweep_dir).mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(study_name=self.study_name, storage=self.storage,
                                    directions=self._get_directions(), load_if_exists=True)
        finished = continue_study(study)
        self.job_idx = len(study.trials)  # trial-N is Optuna's trial N, on a re-run too
        if finished:
            log.info("study %s has %d finished trial(s) from an earlier run of this sweep; %d to go", self.study_name,
                     finished, max(0, self.n_trials - finished))
        self.n_trials = max(0, self.n_trials - finished)
        super().sweep(arguments)


def continue_study(study) -> int:
    """Trials still RUNNING belong to a sweep that was cut off: mark them failed and ask for their parameters
    again. Returns how many trials finished."""
    finished = 0
    for trial in study.trials:
        if trial.state == TrialState.RUNNING:
            # Optuna has no public API to end a trial another process asked for.
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
            study.enqueue_trial(trial.params)
        elif trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and INTERRUPTED not in trial.user_attrs:
            finished += 1
    return finished
