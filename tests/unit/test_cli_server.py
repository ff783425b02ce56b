"""The test harness's command server: where CUDA started while it imported (a GPU machine with torchao), its commands
run as fresh processes, with what a forked command gives: the exit status and the output. A run whose test process
ends first is stopped."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_server import run_in_fresh_process


def test_a_command_in_a_fresh_process_gives_its_status_and_output(tmp_path):
    plan = run_in_fresh_process({"args": ["plan"], "cwd": str(tmp_path), "timeout": 300,
                                 "env": {"HF_HUB_OFFLINE": "1"}})
    assert plan["returncode"] == 0 and "fast path:" in plan["stdout"], plan["stderr"][-2000:]
    refused = run_in_fresh_process({"args": ["plan", "train.kernels=fast"], "cwd": str(tmp_path), "timeout": 300})
    assert refused["returncode"] != 0 and "train.kernels: expected one of auto, liger, none" in refused["stderr"]


# A `timeout` around pytest stops pytest alone: the run it asked the server for must not keep going (on a GPU machine
# it held the card into the next measurement). The server passes SIGTERM on, and the run stops as on a preemption.
TEST_PROCESS = """
import sys
from cli_server import ShardtuneServer
server = ShardtuneServer()
open(sys.argv[1], "w").write(str(server.process.pid))
server.run("train", "method=lora", "launcher.cpu_workers=1", "train.max_steps=100000", "train.eval_interval=0",
           f"output_dir={sys.argv[2]}", cwd=sys.argv[3])
"""


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # a zombie nobody reaps here has ended
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="parent death signal: Linux")
def test_a_run_outliving_its_test_process_stops_as_on_sigterm(tmp_path):
    server_pid, run_dir = tmp_path / "server.pid", tmp_path / "run"
    test_process = subprocess.Popen([sys.executable, "-c", TEST_PROCESS, str(server_pid), str(run_dir), str(tmp_path)],
                                    cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 240
    while not (run_dir / "metrics.jsonl").exists():  # training started
        assert time.monotonic() < deadline and test_process.poll() is None, "the run did not start"
        time.sleep(0.5)
    test_process.kill()
    test_process.wait()
    deadline = time.monotonic() + 90
    while not _ended(int(server_pid.read_text())):
        assert time.monotonic() < deadline, "the server did not end after its test process"
        time.sleep(0.5)
    assert (run_dir / "PREEMPTED").read_text().split()[1] == "SIGTERM"
