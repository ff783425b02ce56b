"""Stopping cleanly on a signal: SIGUSR1 before a time limit, SIGTERM on a preemption or shutdown.

SIGUSR1 asks the run to save a complete checkpoint and stop: Slurm sends it `cluster.signal_before_limit_s`
before the time limit (`#SBATCH --signal=USR1@N`), `scancel --signal=USR1 <job>` sends it at once, and
`kill -USR1` works on any worker. SIGTERM asks the same, but with a deadline: Slurm (preemption, scancel) and
Kubernetes send it and follow with SIGKILL, so a worker that has not saved within `train.grace_period_s`
exits anyway, saying that no checkpoint was written. torchrun's agent forwards a SIGTERM it receives to the
workers (launcher/torchrun.py gives it the grace period to wait).

Ranks receive a signal at different moments, so the request travels with each step's token-count all-reduce
(trainer.py): every rank stops after the same step. Rank 0 then leaves PREEMPTED, naming the checkpoint (and
SIGTERM on a second line when that was the signal); Slurm's batch script requeues the job when it finds it.
"""
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Tuple

from ..run_dir import PREEMPTED_MARKER

log = logging.getLogger("shardtune")


class StopRequest:
    """Set by SIGUSR1 or SIGTERM in this process; read by the training loop."""

    def __init__(self, grace_period_s: float, rank: int):
        self.usr1 = False
        self.term = False
        self.grace_period_s = grace_period_s
        self.rank = rank
        self._deadline: Optional[threading.Timer] = None
        signal.signal(signal.SIGUSR1, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def flags(self) -> list:
        """[SIGUSR1 seen, SIGTERM seen], summed over the ranks by the step's all-reduce."""
        return [int(self.usr1), int(self.term)]

    def _handle(self, signum, frame) -> None:
        # Only flags: the loop saves at a step boundary, never inside a collective.
        if signum == signal.SIGUSR1:
            self.usr1 = True
        elif not self.term:
            self.term = True
            # A thread, not an alarm: the main thread may be blocked in a collective, where no Python signal
            # handler runs. It ends this process whatever the main thread is doing.
            self._deadline = threading.Timer(self.grace_period_s, self._give_up)
            self._deadline.daemon = True
            self._deadline.start()

    def _give_up(self) -> None:
        print(f"shardtune: rank {self.rank}: stopped by SIGTERM; no checkpoint was written within "
              f"train.grace_period_s={self.grace_period_s:g} s", file=sys.stderr, flush=True)
        os._exit(128 + signal.SIGTERM)

    def saved(self) -> None:
        """The checkpoint is complete: the deadline no longer applies."""
        if self._deadline is not None:
            self._deadline.cancel()


def write_marker(output_dir, checkpoint_path: Path, signal_name: str) -> None:
    """Rank 0, beside the checkpoint: Slurm's batch script requeues the job when it finds the marker."""
    extra = "" if signal_name == "SIGUSR1" else f"{signal_name}\n"
    Path(output_dir, PREEMPTED_MARKER).write_text(f"{checkpoint_path}\n{extra}")


def read_marker(output_dir) -> Optional[Tuple[Path, str]]:
    """(the checkpoint, the signal) of a run stopped on a signal; None if it was not."""
    path = Path(output_dir, PREEMPTED_MARKER)
    if not path.exists():
        return None
    lines = path.read_text().split()
    return Path(lines[0]), lines[1] if len(lines) > 1 else "SIGUSR1"


def clear_marker(output_dir) -> None:
    Path(output_dir, PREEMPTED_MARKER).unlink(missing_ok=True)
