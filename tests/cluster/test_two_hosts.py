"""Two hosts for real: two network namespaces joined by a veth pair, each with its own address (made by
the test, loopback-only otherwise), one `shardtune train` (hence one torchrun agent) in each, 2 gloo
workers per host, c10d rendezvous on host 0. LoRA and ZeRO-3 runs must give the losses of the same run
on one host with 4 workers.

Traffic to the namespaces' addresses is only ever sent from inside a namespace: from the root namespace
those addresses would route off the machine.
"""
import os
import subprocess
import sys

import pytest
from cluster_env import require_netns
from conftest import FAST, train_losses

SUBNET = "10.231.{}".format(os.getpid() % 200 + 20)  # a /24 of its own per test process
# Same seed, data and math on 4 ranks either way (measured: identical to the last bit); the tolerance only
# leaves room for a gloo build that orders its sums differently across hosts.
RTOL = 1e-5


@pytest.fixture(scope="module")
def hosts():
    """[(namespace, interface, address)] for host 0 and host 1, deleted afterwards."""
    require_netns()
    tag = os.getpid()
    made = [(f"st-{tag}-h{i}", f"stv{tag % 100000}-{i}", f"{SUBNET}.{i + 1}") for i in range(2)]
    try:
        for namespace, _, _ in made:
            subprocess.run(["ip", "netns", "add", namespace], check=True)
        subprocess.run(["ip", "link", "add", made[0][1], "type", "veth", "peer", "name", made[1][1]], check=True)
        for namespace, interface, address in made:
            for command in (["ip", "link", "set", interface, "netns", namespace],
                            ["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", interface],
                            ["ip", "-n", namespace, "link", "set", "lo", "up"],
                            ["ip", "-n", namespace, "link", "set", interface, "up"]):
                subprocess.run(command, check=True)
        yield made
    finally:
        for namespace, _, _ in made:  # deleting a namespace deletes its end of the veth pair too
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)


def shardtune(*args, namespace=None) -> subprocess.Popen:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    return subprocess.Popen([*prefix, sys.executable, "-m", "shardtune.cli", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})


def finish(process: subprocess.Popen, name: str) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"{name} failed ({process.returncode}):\n{output[-6000:]}"
    return output


@pytest.mark.parametrize("method, strategy, port", [("lora", "ddp", 29511), ("full", "zero3", 29512)],
                         ids=["lora-ddp", "full-zero3"])
def test_two_hosts_give_the_losses_of_one_host(hosts, tmp_path, method, strategy, port):
    run = [f"method={method}", f"strategy={strategy}", "launcher.device=cpu", *FAST]
    if method == "lora":
        run.append("method.dropout=0")
    endpoint = f"{hosts[0][2]}:{port}"
    # The reference and the two hosts run side by side: most of each run is start-up.
    processes = {"one host x 4": shardtune(*run, "launcher.nproc_per_node=4", f"output_dir={tmp_path / 'one-host'}")}
    for node_rank, (namespace, interface, address) in enumerate(hosts):
        processes[f"host {node_rank}"] = shardtune(
            *run, "launcher.nproc_per_node=2", "launcher.nnodes=2", f"launcher.node_rank={node_rank}",
            f"launcher.rdzv_endpoint={endpoint}", f"launcher.socket_ifname={interface}",
            f"launcher.local_addr={address}", f"output_dir={tmp_path / 'two-hosts'}", namespace=namespace)
    outputs = {name: finish(process, name) for name, process in processes.items()}

    assert "--rdzv-backend=c10d" in outputs["host 1"] and "is_host=false" in outputs["host 1"]
    assert "world size 4" in outputs["host 0"] + outputs["host 1"]
    # The data is prepared once per cluster: by host 0's launcher; host 1's workers load that cache entry.
    assert "data prepared in" in outputs["host 0"] or "data reused from" in outputs["host 0"]
    assert "node 1: node 0's launcher prepares the data" in outputs["host 1"]
    assert "data prepared in" not in outputs["host 1"] and "data reused from" not in outputs["host 1"]
    expected, across = train_losses(tmp_path / "one-host"), train_losses(tmp_path / "two-hosts")
    assert sorted(across) == sorted(expected) == list(range(1, 9))
    for step, loss in expected.items():
        assert across[step] == pytest.approx(loss, rel=RTOL), f"step {step}"
    assert across[8] < across[1] - 0.3  # and it trained
    assert (tmp_path / "two-hosts" / "final").is_dir()
    # The nodes share the run directory; each launcher keeps its own log.
    assert (tmp_path / "two-hosts" / "launcher.log").is_file()
    assert (tmp_path / "two-hosts" / "launcher-node1.log").is_file()


def test_unreachable_rendezvous_is_reported_not_waited_on(hosts, tmp_path):
    """Host 1 asks for an address no namespace has: the pre-flight check names the key and stops."""
    namespace = hosts[1][0]
    process = shardtune("launcher.device=cpu", "launcher.nnodes=2", "launcher.node_rank=1",
                        f"launcher.rdzv_endpoint={SUBNET}.99:29513", "launcher.rdzv_check_timeout_s=2",
                        f"output_dir={tmp_path / 'run'}", namespace=namespace)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert f"launcher.rdzv_endpoint: rendezvous endpoint {SUBNET}.99:29513 is not reachable from this node within 2 s" \
        in output, output[-3000:]
