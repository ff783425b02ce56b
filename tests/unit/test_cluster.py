"""Unit tests of the multi-node launch (shardtune/cluster/rendezvous.py, the torchrun command) and of the
Slurm backend's script (shardtune/cluster/slurm.py). Nothing here starts torchrun or talks to Slurm."""
import socket
import sys
import time

import pytest
from conftest import compose_cfg, run_shardtune

from shardtune.cluster import slurm
from shardtune.cluster.rendezvous import check_rendezvous_reachable, split_endpoint
from shardtune.errors import ConfigError
from shardtune.launcher.torchrun import plan_launch, worker_environment

CPU = {"launcher.device": "cpu", "launcher.nproc_per_node": 2}


def c10d_plan(tmp_path, **values):
    return plan_launch(compose_cfg(values={**CPU, "launcher.nnodes": 2, "launcher.rdzv_endpoint": "10.0.0.1:29511",
                                           "output_dir": str(tmp_path), **values}))


def test_c10d_command_names_endpoint_id_nodes_and_host(tmp_path):
    command = c10d_plan(tmp_path, **{"launcher.rdzv_id": "job7", "launcher.max_restarts": 3}).command
    assert command[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    for flag in ("--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29511", "--rdzv-id=job7",
                 "--rdzv-conf=is_host=true,join_timeout=600", "--max-restarts=3"):
        assert flag in command
    assert not any(arg.startswith(("--standalone", "--master-addr", "--node-rank")) for arg in command)
    assert command[-3:] == ["-m", "shardtune.trainer.worker", str(tmp_path / "config.yaml")]


def test_c10d_other_nodes_join_rather_than_host_and_share_the_derived_id(tmp_path):
    node0 = c10d_plan(tmp_path).command
    node1 = c10d_plan(tmp_path, **{"launcher.node_rank": 1, "launcher.local_addr": "10.0.0.2",
                                   "launcher.rdzv_timeout_s": 30}).command
    assert "--rdzv-conf=is_host=false,join_timeout=30" in node1 and "--local-addr=10.0.0.2" in node1
    ids = [[arg for arg in command if arg.startswith("--rdzv-id=")] for command in (node0, node1)]
    assert ids[0] == ids[1] and len(ids[0]) == 1  # same output_dir, same rendezvous id


def test_elastic_node_range(tmp_path):
    command = c10d_plan(tmp_path, **{"launcher.nnodes": 4, "launcher.min_nodes": 2}).command
    assert "--nnodes=2:4" in command


def test_socket_interface_reaches_the_workers(tmp_path):
    cfg = compose_cfg(values={**CPU, "launcher.socket_ifname": "veth-st1", "output_dir": str(tmp_path)})
    env = worker_environment(plan_launch(cfg))
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "veth-st1"


def test_workers_get_expandable_cuda_segments_unless_the_user_set_the_allocator(tmp_path, monkeypatch):
    plan = plan_launch(compose_cfg(values={**CPU, "output_dir": str(tmp_path)}))
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert worker_environment(plan)["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    assert worker_environment(plan)["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"
    slurm_plan = plan_launch(slurm_cfg(tmp_path))
    script = slurm.batch_script(slurm_plan.config, slurm_plan.config_path, "/venv/bin/python")
    assert "export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}" in script


@pytest.mark.parametrize("values, key", [
    ({"launcher.nnodes": 2, "launcher.node_rank": 2}, "launcher.node_rank"),
    ({"launcher.nnodes": 0}, "launcher.nnodes"),
    ({"launcher.nnodes": 2, "launcher.min_nodes": 1}, "launcher.min_nodes"),  # needs c10d
    ({"launcher.nnodes": 2, "launcher.rdzv_endpoint": "h:1", "launcher.min_nodes": 3}, "launcher.min_nodes"),
    ({"launcher.nnodes": 2, "launcher.rdzv_endpoint": "host0:port"}, "launcher.rdzv_endpoint"),
    ({"launcher.max_restarts": -1}, "launcher.max_restarts"),
    ({"cluster.name": "pbs"}, "cluster.name"),
])
def test_bad_launcher_settings_name_the_key(tmp_path, values, key):
    with pytest.raises(ConfigError) as info:
        plan_launch(compose_cfg(values={**CPU, "output_dir": str(tmp_path), **values}))
    assert info.value.key == key


@pytest.mark.parametrize("endpoint, expected", [("host0:29500", ("host0", 29500)), ("host0", ("host0", 29400)),
                                                ("[fe80::1]:7", ("fe80::1", 7)), ("10.1.2.3:1", ("10.1.2.3", 1))])
def test_split_endpoint(endpoint, expected):
    assert split_endpoint(endpoint) == expected


# --------------------------------------------------------------------------- the pre-flight check

def launcher_at(port, **values):
    return compose_cfg(values={"launcher.nnodes": 2, "launcher.node_rank": 1,
                               "launcher.rdzv_endpoint": f"127.0.0.1:{port}", **values}).launcher


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_reachable_endpoint_passes():
    with socket.create_server(("127.0.0.1", 0)) as server:
        check_rendezvous_reachable(launcher_at(server.getsockname()[1]))


def test_nothing_listening_is_reported_within_the_deadline():
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        check_rendezvous_reachable(launcher_at(free_port(), **{"launcher.rdzv_check_timeout_s": 0.5,
                                                               "launcher.rdzv_timeout_s": 1}))
    assert info.value.key == "launcher.rdzv_endpoint"
    assert "nothing listens at the rendezvous endpoint 127.0.0.1" in str(info.value)
    assert time.monotonic() - started < 5


def test_unresolvable_host_is_reported_at_once(monkeypatch):
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    launcher = compose_cfg(values={"launcher.nnodes": 2, "launcher.node_rank": 1,
                                   "launcher.master_addr": "nohost", "launcher.master_port": 29500}).launcher
    with pytest.raises(ConfigError, match="rendezvous host 'nohost' does not resolve") as info:
        check_rendezvous_reachable(launcher)
    assert info.value.key == "launcher.master_addr"


def test_node_zero_and_single_node_runs_check_nothing(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("no check expected"))
    check_rendezvous_reachable(launcher_at(1, **{"launcher.node_rank": 0}))
    check_rendezvous_reachable(compose_cfg().launcher)
    check_rendezvous_reachable(launcher_at(1, **{"launcher.rdzv_check_timeout_s": 0}))


def test_cli_reports_an_unreachable_rendezvous_instead_of_hanging(tmp_path):
    result = run_shardtune("train", "launcher.device=cpu", "launcher.nnodes=2", "launcher.node_rank=1",
                           f"launcher.rdzv_endpoint=127.0.0.1:{free_port()}", "launcher.rdzv_check_timeout_s=0.5",
                           "launcher.rdzv_timeout_s=1", f"output_dir={tmp_path / 'run'}", check=False)
    assert result.returncode != 0
    assert "shardtune: config error: launcher.rdzv_endpoint: nothing listens at the rendezvous endpoint" in result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


# --------------------------------------------------------------------------- the Slurm script

def slurm_cfg(tmp_path, *overrides, **values):
    return compose_cfg("cluster=slurm", *overrides, values={"output_dir": str(tmp_path / "run"), **values})


def test_slurm_allocation_sets_the_launcher(tmp_path):
    cfg = slurm_cfg(tmp_path, **{"cluster.nodes": 4, "cluster.gpus_per_node": 8})
    plan = plan_launch(cfg)  # no GPU here: a login node plans for the compute nodes' GPUs
    assert (plan.device_type, plan.nproc_per_node, plan.world_size) == ("cuda", 8, 32)
    assert plan.config.train.precision == "bf16"
    line = plan.command_line()
    assert '"--rdzv-endpoint=$RDZV_HOST:$RDZV_PORT"' in line and '"--rdzv-id=slurm-$SLURM_JOB_ID"' in line
    assert '"--rdzv-conf=is_host=$IS_HOST,join_timeout=600"' in line and "--nnodes=4" in line


def test_batch_script_asks_for_the_allocation_signal_and_requeue(tmp_path):
    cfg = slurm_cfg(tmp_path, **{"cluster.nodes": 2, "cluster.partition": "gpu", "cluster.time": "04:00:00",
                                 "cluster.signal_before_limit_s": 120, "cluster.sbatch_options": ["--exclusive"],
                                 "cluster.setup": ["module load cuda"], "launcher.socket_ifname": "ib0",
                                 "launcher.nproc_per_node": 2})
    plan = plan_launch(cfg)
    script = slurm.batch_script(plan.config, plan.config_path, "/venv/bin/python")
    run = tmp_path / "run"
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --partition=gpu",
                 "#SBATCH --time=04:00:00", "#SBATCH --signal=USR1@120", "#SBATCH --requeue",
                 "#SBATCH --exclusive", f"#SBATCH --output={run}/slurm/%j.out", "#SBATCH --open-mode=append",
                 "module load cuda", "export GLOO_SOCKET_IFNAME=ib0", "export NCCL_SOCKET_IFNAME=ib0",
                 "srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c run_node",
                 f"if [ -e {run}/PREEMPTED ]; then", '    scontrol requeue "$SLURM_JOB_ID"'):
        assert line in script.splitlines(), line
    assert "exec /venv/bin/python -m torch.distributed.run --nproc-per-node=2 --nnodes=2" in script
    assert "--gpus-per-node" not in script  # CPU workers


def test_bad_allocation_names_the_cluster_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        plan_launch(slurm_cfg(tmp_path, **{"cluster.nodes": 0}))
    assert info.value.key == "cluster.nodes"


def test_no_requeue_when_turned_off(tmp_path):
    plan = plan_launch(slurm_cfg(tmp_path, **{"cluster.requeue": False}))
    assert "#SBATCH --requeue" not in slurm.batch_script(plan.config, plan.config_path, "python")


def test_plan_prints_the_script_and_submits_nothing(tmp_path):
    result = run_shardtune("plan", "cluster=slurm", "cluster.nodes=2", "cluster.gpus_per_node=8",
                           "cluster.partition=gpu", f"output_dir={tmp_path / 'run'}")
    assert "world size: 16 (2 node(s) x 8 cuda worker(s))" in result.stdout
    assert "each node (one srun task per node):" in result.stdout
    assert "#SBATCH --gpus-per-node=8" in result.stdout and "#SBATCH --partition=gpu" in result.stdout
    assert not (tmp_path / "run").exists()


def test_status_and_cancel_need_a_submitted_run(tmp_path):
    for command in ("status", "cancel"):
        result = run_shardtune(command, str(tmp_path), check=False)
        assert result.returncode != 0
        assert f"shardtune: run_dir: {tmp_path} has no Slurm job" in result.stderr


def test_settings_a_cluster_ignores_are_warned_about(tmp_path, caplog):
    plan_launch(slurm_cfg(tmp_path, **{"cluster.nodes": 2, "launcher.nnodes": 3, "launcher.device": "cpu"}))
    assert "launcher.nnodes is ignored with cluster=slurm" in caplog.text
    caplog.clear()
    plan_launch(compose_cfg(values={**CPU, "cluster.partition": "gpu", "output_dir": str(tmp_path / "local")}))
    assert "cluster.partition is a Slurm setting, ignored with cluster=local" in caplog.text


# --------------------------------------------------------------------------- inside an srun step

STEP = {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_NODEID": "1", "SLURM_STEP_NODELIST": "gpu[07-08]"}


@pytest.fixture
def scontrol(monkeypatch):
    """Slurm's answers for a step on gpu07, gpu08 (NodeAddr 10.1.0.7 for gpu07)."""
    from shardtune.cluster import environment
    monkeypatch.setattr(environment, "first_node", lambda node_list: {"gpu[07-08]": "gpu07"}[node_list])
    monkeypatch.setattr(environment, "node_address", lambda node: {"gpu07": "10.1.0.7"}[node])


def test_srun_step_gives_nodes_rank_and_rendezvous(tmp_path, monkeypatch, scontrol):
    for name, value in STEP.items():
        monkeypatch.setenv(name, value)
    plan = plan_launch(compose_cfg(values={**CPU, "output_dir": str(tmp_path)}))
    assert plan.world_size == 4
    for flag in ("--nnodes=2", "--rdzv-endpoint=10.1.0.7:29500", "--rdzv-id=slurm-77",
                 "--rdzv-conf=is_host=false,join_timeout=600"):
        assert flag in plan.command


def test_srun_step_with_a_task_per_gpu_is_refused(tmp_path, monkeypatch, scontrol):
    for name, value in {**STEP, "SLURM_STEP_NUM_TASKS": "16"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="use srun --ntasks-per-node=1") as info:
        plan_launch(compose_cfg(values={**CPU, "output_dir": str(tmp_path)}))
    assert info.value.key == "launcher.nnodes"


def test_a_batch_script_alone_is_not_a_step(tmp_path, monkeypatch, scontrol):
    for name, value in STEP.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_STEP_ID")
    assert "--standalone" in plan_launch(compose_cfg(values={**CPU, "output_dir": str(tmp_path)})).command


@pytest.mark.parametrize("limit, seconds", [("30", 1800), ("05:30", 330), ("04:00:00", 14400), ("1-12", 129600),
                                            ("2-00:30", 174600), ("1-00:00:10", 86410)])
def test_slurm_time_limits(limit, seconds):
    assert slurm.time_limit_seconds(limit) == seconds


@pytest.mark.parametrize("values, key", [
    ({"cluster.time": "00:05:00", "cluster.signal_before_limit_s": 300}, "cluster.signal_before_limit_s"),
    ({"cluster.time": "4 hours"}, "cluster.time"),
])
def test_a_signal_the_time_limit_leaves_no_room_for_is_refused(tmp_path, values, key):
    with pytest.raises(ConfigError) as info:
        plan_launch(slurm_cfg(tmp_path, **values))
    assert info.value.key == key


def test_a_time_limit_with_room_for_the_signal_is_accepted(tmp_path):
    plan_launch(slurm_cfg(tmp_path, **{"cluster.time": "00:02:00", "cluster.signal_before_limit_s": 50}))
