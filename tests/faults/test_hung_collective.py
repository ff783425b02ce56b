"""A rank that stops answering (SIGSTOP: alive, silent) in the middle of training. The other rank's next collective
fails after launcher.collective_timeout_s, naming the step and the rank that stopped; torchrun's agent stops the
group: the stopped rank cannot act on the SIGTERM it is sent, and is killed with SIGKILL 30 s later (torch's fixed
wait there), then, with launcher.max_restarts=1, the workers restart and resume from the newest complete checkpoint.
The test takes those 30 s: they are what a user waits."""
import re
import signal
import time

import pytest

from conftest import FAST, train_losses
from fault_runs import BackgroundRun
from shardtune.run_dir import COMPLETE_MARKER, checkpoint_dir

TIMEOUT_S = 2


def test_stopped_rank_fails_the_others_within_the_timeout_and_the_run_resumes(tmp_path, shared_run):
    output_dir = tmp_path / "run"
    run = BackgroundRun(output_dir, "method=lora", "method.dropout=0", *FAST, "train.save_interval=4",
                        f"launcher.collective_timeout_s={TIMEOUT_S}", "launcher.max_restarts=1",
                        "launcher.setup_timeout_s=15")  # what a save waits: the stop should land before step 8's
    stopped = run.worker(1)
    run.wait_for_path(checkpoint_dir(output_dir, 4) / COMPLETE_MARKER)
    stopped.send_signal(signal.SIGSTOP)  # steps 5-8 to go before the next save
    stopped_at, stopped_clock = time.monotonic(), time.localtime()
    result = run.finish()
    assert result.returncode == 0, result.stderr[-4000:]

    failed = re.search(r"\[rank0\]: shardtune\.trainer\.collectives\.CollectiveTimeoutError: a collective timed out "
                       r"on rank 0 in step (\d+) \((launcher\.\w+)=(\d+)\): stopped answering: "
                       r"rank 1 \(its last heartbeat in step (\d+)\)", result.stderr)
    assert failed, result.stderr[-4000:]
    step, last_heartbeat_step = int(failed.group(1)), int(failed.group(4))
    # The stop lands just after step 4's save, and the last beat may be one interval (0.2 s) older than that: from
    # step 3 (seen once under a full make test, where step 4 and its save took less than an interval).
    assert 4 <= step <= 8 and 3 <= last_heartbeat_step <= step
    # A training step's collective, unless the stop landed in a save, where the long timeout applies: step 4's (its
    # last barrier, after the COMPLETE marker the test waits for: on a busy machine rank 1 may not be past it yet)
    # or step 8's.
    in_a_save = step in (4, 8)
    assert failed.group(2, 3) == ("launcher.collective_timeout_s", "2") or in_a_save
    # Within the timeout: rank 0 logged the error (to the second) 2 s + the heartbeat check (0.6 s) after the stop.
    logged = re.search(r"\[(\d\d):(\d\d):(\d\d) shardtune\] a collective timed out on rank 0", result.stderr)
    seconds_of_day = int(logged.group(1)) * 3600 + int(logged.group(2)) * 60 + int(logged.group(3))
    stopped_seconds = stopped_clock.tm_hour * 3600 + stopped_clock.tm_min * 60 + stopped_clock.tm_sec
    assert (seconds_of_day - stopped_seconds) % 86400 <= TIMEOUT_S + 2 or in_a_save
    # Killed by torchrun's agent (its torch.multiprocessing context): the SIGTERM went unanswered.
    assert f"Unable to shutdown process {stopped.pid} via SIGTERM , forcefully exiting via SIGKILL" in result.stderr
    assert not stopped.is_running()

    resumed = re.search(r"restart 1 of the workers: resuming from \S+ at step (\d+)", result.stderr)
    assert resumed, result.stderr[-4000:]
    checkpoint_step = int(resumed.group(1))
    assert checkpoint_step == 4  # lost: the steps since that checkpoint
    expected, losses = train_losses(shared_run("lora-ddp")), train_losses(output_dir)
    assert sorted(losses) == list(range(1, 9))
    for later in range(checkpoint_step + 1, 9):
        assert losses[later] == pytest.approx(expected[later], rel=1e-5), f"step {later}"
    # The timeout (2 s), the agent's 30 s and a restart; not gloo's 30 minutes.
    assert time.monotonic() - stopped_at < 60
