"""What the cluster tests need from this machine: root, network namespaces, a local Slurm; and helpers
to wait for a Slurm job with a deadline. Where the machine cannot run a test, it is skipped with the
reason; on CI (root, iproute2) they all run."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL_SLURM = REPO / "scripts" / "local_slurm.sh"


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root (this test runs as uid {os.geteuid()})")


def require_netns() -> None:
    require_root("creating network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to create network namespaces")
    probe = f"st-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"`ip netns add` is not permitted here: {made.stderr.strip()}")
    subprocess.run(["ip", "netns", "delete", probe], check=True)


def start_local_slurm() -> None:
    """Install (first time), configure and start the 2-node single-host Slurm; a no-op when it runs."""
    require_root("installing and starting a local Slurm")
    result = subprocess.run(["bash", str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=600)
    if result.returncode == 3:
        pytest.skip(f"this machine has a Slurm configuration of its own, which the tests leave alone: {result.stderr.strip()}")
    assert result.returncode == 0, f"{LOCAL_SLURM} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return fields.get("JobState", "UNKNOWN")


def wait_for_job(job_id: str, done, deadline_s: float, poll_s: float = 0.5) -> None:
    """Poll (with a deadline) until done() is true; fail with the job's state and log otherwise."""
    deadline = time.monotonic() + deadline_s
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"Slurm job {job_id} still {job_state(job_id)} after {deadline_s:g} s")
        time.sleep(poll_s)


def job_finished(job_id: str) -> bool:
    return job_state(job_id) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                                 "BOOT_FAIL", "DEADLINE")
