"""hydra/sweeper=optuna: Hydra's Optuna sweeper plugin with a persistent study, pruning, the objective's direction
and re-runs that continue the study (_optuna_impl.py). This module stays light: Hydra imports it at every start.

Its config replaces the plugin's own hydra/sweeper=optuna (ShardtuneOptunaConfig below).
"""
import os
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra.plugins.sweeper import Sweeper
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf

# optuna 2.x (the plugin's pin) uses SQLAlchemy 1.x APIs on purpose; its import-time warning is not the user's.
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")


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



class ShardtuneOptunaConfig(SearchPathPlugin):
    """Stores hydra/sweeper=optuna as ours. Hydra's plugin scan executes every plugin module, the Optuna plugin's
    config module (which stores its own) included, in an order that depends on how the packages are installed;
    Hydra asks the search path plugins after the scan and before it composes any config, so an entry stored here is
    the one that counts."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=ShardtuneOptunaSweeperConf,
                                     provider="shardtune")
