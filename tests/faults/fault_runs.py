"""A `shardtune train` running in the background while a test injects a fault: find its workers, wait for its
steps, then collect its result. The command runs in this pytest worker's command server (tests/cli_server.py), so
its launcher and workers are that server's descendants; on CPU the workers are forks named by their rank."""
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import cli_server, read_metrics, run_shardtune

DEADLINE_S = 120


class BackgroundRun:
    def __init__(self, output_dir: Path, *overrides: str, env: dict = None):
        self.output_dir = output_dir
        self.result = None
        server = cli_server()  # started here, not in the thread, so that its process is known at once
        self.server = psutil.Process(server.process.pid)
        self.thread = threading.Thread(target=self._run, args=(overrides, env), daemon=True)
        self.thread.start()

    def _run(self, overrides, env) -> None:
        self.result = run_shardtune("train", *overrides, f"output_dir={self.output_dir}", check=False, env=env)

    def worker(self, rank: int) -> psutil.Process:
        """The live worker of rank `rank` (a restarted group's, once the old one is gone)."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            for process in self.server.children(recursive=True):
                try:
                    if process.name() == f"shardtune-r{rank}" and process.status() != psutil.STATUS_ZOMBIE:
                        return process
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.1)  # polling for the worker to appear, with a deadline
        pytest.fail(f"no worker of rank {rank} appeared")

    def wait_for_step(self, step: int) -> int:
        """Wait until metrics.jsonl has logged `step` (or later); the last step logged."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and self.thread.is_alive():
            rows = read_metrics(self.output_dir)
            if rows and rows[-1]["step"] >= step:
                return rows[-1]["step"]
            time.sleep(0.05)  # polling for the step, with a deadline
        pytest.fail(f"the run did not reach step {step}: {self.finish().stderr[-3000:] if self.result else ''}")

    def wait_for_path(self, path: Path) -> None:
        """Wait until `path` exists (a checkpoint's shard file or marker)."""
        deadline = time.monotonic() + DEADLINE_S
        while not path.exists():
            if time.monotonic() > deadline or not self.thread.is_alive():
                pytest.fail(f"{path} never appeared")
            time.sleep(0.05)  # polling for the file, with a deadline

    def finish(self, timeout_s: float = DEADLINE_S):
        """The command's CompletedProcess once it has ended."""
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"the run did not end within {timeout_s} s"
        return self.result
