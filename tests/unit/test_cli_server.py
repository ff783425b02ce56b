"""The test harness's command server: where CUDA started while it imported (a GPU machine with torchao), its commands
run as fresh processes, with what a forked command gives: the exit status and the output."""
from cli_server import run_in_fresh_process


def test_a_command_in_a_fresh_process_gives_its_status_and_output(tmp_path):
    plan = run_in_fresh_process({"args": ["plan"], "cwd": str(tmp_path), "timeout": 300,
                                 "env": {"HF_HUB_OFFLINE": "1"}})
    assert plan["returncode"] == 0 and "fast path:" in plan["stdout"], plan["stderr"][-2000:]
    refused = run_in_fresh_process({"args": ["plan", "train.kernels=fast"], "cwd": str(tmp_path), "timeout": 300})
    assert refused["returncode"] != 0 and "train.kernels: expected one of auto, liger, none" in refused["stderr"]
