"""Stopping cleanly before a time limit or a preemption.

SIGUSR1 asks the run to save a complete checkpoint and stop: Slurm sends it `cluster.signal_before_limit_s`
before the time limit (`#SBATCH --signal=USR1@N`), `scancel --signal=USR1 <job>` sends it at once, and
`kill -USR1` works on any worker. Ranks receive the signal at different moments, so the request travels
with each step's token-count all-reduce (trainer.py): every rank stops after the same step.
"""
import signal
from pathlib import Path

from ..run_dir import PREEMPTED_MARKER


class PreemptionRequest:
    """Set by SIGUSR1 in this process; read by the training loop."""

    def __init__(self, signum: int = signal.SIGUSR1):
        self.requested = False
        signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True  # only a flag: the loop saves at a step boundary, never inside a collective


def write_marker(output_dir, checkpoint_path: Path) -> None:
    """Rank 0, beside the checkpoint: Slurm's batch script requeues the job when it finds the marker."""
    Path(output_dir, PREEMPTED_MARKER).write_text(f"{checkpoint_path}\n")


def clear_marker(output_dir) -> None:
    Path(output_dir, PREEMPTED_MARKER).unlink(missing_ok=True)
