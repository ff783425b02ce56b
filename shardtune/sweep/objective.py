"""What a trial reports to the sweeper (sweep.objective), read back from what the run wrote."""
import json
import math
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..run_dir import EVAL_FILE, read_metrics, read_summary
from .pruning import check_pruning

# Objectives read from the run itself; eval/<metric> ones come from `shardtune eval` on the validation split.
RUN_OBJECTIVES = {"val_loss": "minimize", "train_loss": "minimize", "tokens_per_second": "maximize"}
EVAL_METRICS = {"loss": "minimize", "perplexity": "minimize", "exact_match": "maximize", "rouge_l": "maximize"}
EVAL_PREFIX = "eval/"


def direction_of(objective: str) -> str:
    """minimize or maximize; a clear error naming sweep.objective for anything else."""
    if objective in RUN_OBJECTIVES:
        return RUN_OBJECTIVES[objective]
    if objective.startswith(EVAL_PREFIX) and objective[len(EVAL_PREFIX):] in EVAL_METRICS:
        return EVAL_METRICS[objective[len(EVAL_PREFIX):]]
    choices = [*RUN_OBJECTIVES, *(EVAL_PREFIX + name for name in EVAL_METRICS)]
    raise ConfigError("sweep.objective", f"{objective!r} is not one of {', '.join(choices)}")


def check_sweep_settings(cfg, sweeper_target: str) -> None:
    """The settings every trial shares: the launcher refuses them before any trial starts, and each trial checks
    them again (a sweep may run through another Hydra launcher)."""
    direction_of(cfg.sweep.objective)
    if cfg.sweep.objective.startswith(EVAL_PREFIX) and cfg.cluster.name == "slurm":
        raise ConfigError("sweep.objective", "eval/ objectives run shardtune eval where the sweep runs, after the "
                                             "trial's job; with cluster=slurm use val_loss, train_loss or tokens_per_second")
    check_pruning(cfg, sweeper_target)


def worst_value(objective: str) -> float:
    """What a failed trial reports: the sweeper ranks it below every finished trial."""
    return math.inf if direction_of(objective) == "minimize" else -math.inf


def last_value(records: list, key: str) -> Optional[float]:
    values = [record[key] for record in records if key in record]
    return values[-1] if values else None


def measurements(run_dir: Path) -> dict:
    """What a run measured: its summary.json where it finished, else its last logged values. Keys: the run
    objectives (val_loss, train_loss, tokens_per_second) and peak_memory_gib (GPU, or host memory on CPU)."""
    records, summary = read_metrics(run_dir), read_summary(run_dir)
    return {"val_loss": last_value(records, "val/loss"), "train_loss": last_value(records, "loss"),
            "tokens_per_second": summary.get("tokens_per_second") or last_value(records, "tokens_per_second"),
            "peak_memory_gib": (summary.get("peak_mem_alloc_gib") or summary.get("host_rss_gib")
                                or last_value(records, "peak_mem_alloc_gib") or last_value(records, "host_rss_gib"))}


def objective_value(run_dir: Path, objective: str, measured: Optional[dict] = None) -> Optional[float]:
    """The objective of a finished (or pruned) run; None when the run never measured it. `measured`: the run's
    measurements() where the caller has them already."""
    if objective.startswith(EVAL_PREFIX):
        path = Path(run_dir) / EVAL_FILE
        results = json.loads(path.read_text()) if path.exists() else {}
        return results.get("model", {}).get(objective[len(EVAL_PREFIX):])
    return (measured or measurements(run_dir))[objective]
