"""<sweep_dir>/trial-N/trial.json: what became of one trial, written when it starts and when it ends."""
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

from ..run_dir import write_json_atomic
from .naming import identity
from .objective import measurements

RECORD_NAME = "trial.json"
FINISHED = ("completed", "pruned", "failed")  # "running" is the other status: in flight, or interrupted


@dataclass
class TrialRecord:
    number: int
    overrides: List[str]
    """The trial's command-line overrides: the sweep's fixed ones and this trial's values."""
    objective: str
    status: str = "running"
    value: Optional[float] = None
    """The objective; for a pruned trial its last validation loss; None for a failed one."""
    val_loss: Optional[float] = None
    tokens_per_second: Optional[float] = None
    peak_memory_gib: Optional[float] = None
    """GPU memory allocated at the peak on the busiest rank; on CPU the host memory of a worker."""
    wall_time_s: Optional[float] = None
    """The trial's, start-up and data included."""
    started_at: Optional[float] = None
    """Unix times the trial started and ended (trials of a parallel sweep overlap)."""
    ended_at: Optional[float] = None
    error: Optional[str] = None
    run_dir: str = ""
    slurm_job_id: Optional[str] = None
    params: dict = field(default_factory=dict)
    """key -> value of every override, for tables and plots."""

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def measure(self, run_dir: Path) -> dict:
        """Fill in what the run measured; returns objective.measurements(run_dir)."""
        measured = measurements(run_dir)
        self.val_loss, self.tokens_per_second = measured["val_loss"], measured["tokens_per_second"]
        self.peak_memory_gib = measured["peak_memory_gib"]
        return measured

    def save(self, run_dir: Path) -> None:
        write_json_atomic(Path(run_dir) / RECORD_NAME, asdict(self))  # readers (a re-run, the report) never see half


def load_record(run_dir: Path) -> Optional[TrialRecord]:
    path = Path(run_dir) / RECORD_NAME
    if not path.exists():
        return None
    return TrialRecord(**json.loads(path.read_text()))


def params_of(overrides: List[str]) -> dict:
    """{key: value} of the trial's own `key=value` overrides (values as written; `+key=` and `~key` keep their key)."""
    params = {}
    for override in identity(overrides):
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    return params
