"""Collective timeouts, and naming the rank that stopped answering when one runs out.

Set-up may keep ranks apart for long (rank 0 loads or tokenizes alone, the first step compiles), so the process group
starts with launcher.setup_timeout_s. Once the first training step is done every rank keeps in step, and a collective
that waits longer than launcher.collective_timeout_s means a rank stopped answering: the group's timeout is lowered
then, as torchtitan's train.py does after its first step, with torch's `_set_pg_timeout` (the one way torch offers to
change a live group's timeout; it sets gloo's and NCCL's alike). Phases where one rank again works alone (saving a
checkpoint, exporting final/) get the long timeout back for their duration (`alone`).

Which rank stopped: torch's error says only that a receive timed out. So each rank has a heartbeat thread that
writes a count and the step it is in to the rendezvous store (torchrun's TCPStore) a few times per timeout; after a
timeout a surviving rank reads the counts twice, a few beats apart, and names the ranks whose count did not move: a
stopped process (SIGSTOP, a frozen node) or a dead machine. A rank that is alive but stuck keeps beating; the report
then says so and gives the step each rank is in.

On NCCL, torch's watchdog ends a rank whose collective timed out before Python sees an error (its report names the
collective and its sequence number); the heartbeat report is for errors that reach Python, as gloo's (CPU) do.
"""
import contextlib
import os
import re
import threading
import time
from datetime import timedelta

import torch.distributed as dist

_TIMEOUT_TEXT = re.compile(r"timed out|timeout", re.IGNORECASE)


class CollectiveTimeoutError(RuntimeError):
    pass


def init_timeout(launcher) -> timedelta:
    """What the process group starts with (trainer.init_distributed)."""
    return timedelta(seconds=launcher.setup_timeout_s)


class CollectiveWatch:
    def __init__(self, launcher, rank: int, world_size: int):
        self.timeout_s = launcher.collective_timeout_s
        self.setup_timeout_s = launcher.setup_timeout_s
        self.rank, self.world_size = rank, world_size
        self.step = 0  # the step this rank is in, as the heartbeat reports it
        self.training = False  # whether the short timeout applies (outside `alone`)
        self.timeout_setting = "launcher.setup_timeout_s"  # the key whose timeout is in force
        self.failed = False  # a collective timed out: the group cannot be used, not even to tear it down
        self.interval_s = min(10.0, max(0.2, self.timeout_s / 10))
        # Keys of this attempt of the workers: a restarted group must not read the failed group's beats.
        self._prefix = f"shardtune/heartbeat/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self._beats = 0
        self._store = self._connect()
        threading.Thread(target=self._beat, name="shardtune-heartbeat", daemon=True).start()

    def _connect(self) -> dist.TCPStore:
        # The rendezvous store torchrun gives the workers (MASTER_ADDR, MASTER_PORT), as a client of our own: the
        # process group's connection is not for other threads.
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=timedelta(seconds=max(1.0, 2 * self.interval_s)))

    def _beat(self) -> None:
        while True:
            self._beats += 1
            try:
                self._store.set(f"{self._prefix}{self.rank}", f"{self._beats} {self.step}")
            except Exception:  # the store's host stopped too (rank 0 hosts it where restarts are allowed): keep trying
                pass
            time.sleep(self.interval_s)

    # -- timeouts ------------------------------------------------------------------------------
    def start_training(self) -> None:
        """After the first step: from now on a collective waits at most launcher.collective_timeout_s."""
        self.training = True
        self._set_timeout("launcher.collective_timeout_s")

    @contextlib.contextmanager
    def alone(self):
        """A phase where one rank may work alone for long (a checkpoint, final/): the set-up timeout meanwhile."""
        if not self.training:
            yield
            return
        self._set_timeout("launcher.setup_timeout_s")
        try:
            yield
        finally:
            if not self.failed:
                self._set_timeout("launcher.collective_timeout_s")

    def _set_timeout(self, key: str) -> None:
        self.timeout_setting = key
        seconds = self.timeout_s if key == "launcher.collective_timeout_s" else self.setup_timeout_s
        dist.distributed_c10d._set_pg_timeout(timedelta(seconds=seconds))

    # -- after a timeout -------------------------------------------------------------------------
    def explain(self, error: BaseException):
        """A CollectiveTimeoutError naming the step and the ranks that stopped, where `error` is a collective's
        timeout while training; None for any other error."""
        if not (self.training and isinstance(error, RuntimeError) and _TIMEOUT_TEXT.search(str(error))):
            return None
        self.failed = True
        first = self._read_beats()
        time.sleep(3 * self.interval_s)  # long enough for every live rank to beat at least twice
        second = self._read_beats()
        stopped = [rank for rank in range(self.world_size) if rank != self.rank
                   and (second.get(rank) is None or second[rank][0] == first.get(rank, (None,))[0])]
        seconds = self.timeout_s if self.timeout_setting == "launcher.collective_timeout_s" else self.setup_timeout_s
        where = f"a collective timed out on rank {self.rank} in step {self.step} ({self.timeout_setting}={seconds:g})"
        if not second:
            return CollectiveTimeoutError(f"{where}; the rendezvous store did not answer either (its host, rank 0 "
                                          f"where restarts are allowed, may be the rank that stopped)")
        if stopped:
            named = ", ".join(f"rank {rank} (its last heartbeat in step {second[rank][1]})" if rank in second
                              else f"rank {rank} (no heartbeat)" for rank in stopped)
            return CollectiveTimeoutError(f"{where}: stopped answering: {named}")
        steps = ", ".join(f"rank {rank} in step {second[rank][1]}" for rank in sorted(second))
        return CollectiveTimeoutError(f"{where}; every rank is alive but one is stuck: {steps}")

    def _read_beats(self) -> dict:
        """{rank: (count, step)} of the ranks the store has heard from."""
        beats = {}
        try:
            store = self._connect()
            for rank in range(self.world_size):
                key = f"{self._prefix}{rank}"
                if store.check([key]):
                    count, step = store.get(key).decode().split()
                    beats[rank] = (int(count), int(step))
        except Exception:  # the store's host is gone: what was read so far
            pass
        return beats
