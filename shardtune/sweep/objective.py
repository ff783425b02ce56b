"""What a trial reports to the sweeper (sweep.objective), read back from what the run wrote."""
import json
import math
from pathlib import Path
from typing import Optional

from ..validation import ConfigError

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


def worst_value(objective: str) -> float:
    """What a failed trial reports: the sweeper ranks it below every finished trial."""
    return math.inf if direction_of(objective) == "minimize" else -math.inf


def read_metrics(run_dir: Path) -> list:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a torn last line of a run that died mid-write
    return records


def last_value(records: list, key: str) -> Optional[float]:
    values = [record[key] for record in records if key in record]
    return values[-1] if values else None


def read_summary(run_dir: Path) -> dict:
    from ..trainer.metrics import SUMMARY_FILE  # here: Hydra's plugin scan imports this module at every start
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def objective_value(run_dir: Path, objective: str) -> Optional[float]:
    """The objective of a finished (or pruned) run; None when the run never measured it."""
    if objective.startswith(EVAL_PREFIX):
        path = Path(run_dir) / "eval.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        return results.get("model", {}).get(objective[len(EVAL_PREFIX):])
    if objective == "tokens_per_second":
        return read_summary(run_dir).get("tokens_per_second") or last_value(read_metrics(run_dir), "tokens_per_second")
    return last_value(read_metrics(run_dir), "val/loss" if objective == "val_loss" else "loss")
