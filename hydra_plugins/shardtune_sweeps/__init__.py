"""shardtune's Hydra plugins (Hydra only loads plugins from the hydra_plugins package): the launcher that runs a
sweep's trials side by side where the devices allow, and the Optuna sweeper with a persistent study and pruning.
Each registers its config when Hydra's plugin scan imports it."""
