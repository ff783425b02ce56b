"""hydra/launcher=shardtune (the default): Hydra's joblib launcher, with as many trials in flight as
shardtune.sweep.parallel.parallel_trials allows (one at a time runs in this process, as Hydra's basic launcher does).
Its config is registered when Hydra's plugin scan imports this module, as every Hydra plugin's is."""
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

from shardtune.sweep.objective import check_sweep_settings
from shardtune.sweep.parallel import parallel_trials


class ShardtuneLauncher(JoblibLauncher):
    def launch(self, job_overrides, initial_job_idx):
        # Settings every trial shares are checked once here, before any trial starts.
        check_sweep_settings(self.config, self.config.hydra.sweeper.get("_target_", ""))
        self.joblib["n_jobs"] = parallel_trials(self.config, len(job_overrides))
        return super().launch(job_overrides, initial_job_idx)


@dataclass
class ShardtuneLauncherConf(JobLibLauncherConf):
    _target_: str = "hydra_plugins.shardtune_sweeps.launcher.ShardtuneLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="shardtune", node=ShardtuneLauncherConf, provider="shardtune")
