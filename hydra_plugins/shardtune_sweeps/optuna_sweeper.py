"""hydra/sweeper=optuna: Hydra's Optuna sweeper plugin with a persistent study, pruning, the objective's direction
and re-runs that continue the study (_optuna_impl.py). This module stays light: Hydra imports it at every start."""
from dataclasses import dataclass
from typing import Any, Optional

from hydra.plugins.sweeper import Sweeper
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf


class ShardtuneOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from ._optuna_impl import ShardtuneOptunaSweeperImpl
        self.sweeper = ShardtuneOptunaSweeperImpl(**settings)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments) -> None:
        return self.sweeper.sweep(arguments)


@dataclass
class ShardtuneOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.shardtune_sweeps.optuna_sweeper.ShardtuneOptunaSweeper"
    direction: Any = None  # null: from sweep.objective
    n_jobs: Optional[int] = None  # null: sweep.parallel_trials
