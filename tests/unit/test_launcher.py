"""Unit tests of the launcher (shardtune/launcher/torchrun.py) and of `shardtune plan`.

plan_launch and write_run_config are called in-process on configs composed with Hydra's compose API
(composed once per group selection; field values are then set on the typed nodes). Nothing here starts
torchrun: the only CLI runs are `shardtune plan`, which stops after printing.
"""
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import compose_cfg, run_shardtune
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from shardtune.config import LoraMethodConfig, TrainConfig, load_resolved
from shardtune.errors import ConfigError
from shardtune.launcher.memory import GIB, estimate_memory
from shardtune.launcher.torchrun import detect_device, plan_launch, torchrun_command, write_run_config
from shardtune.run_dir import RUN_OUTPUTS
from shardtune.strategy_registry import DeepSpeedStrategyConfig

WORKER_TAIL = ["-m", "shardtune.trainer.worker"]
AUTO_1B = ["model=llama3.2-1b", "method=lora", "strategy=ddp"]



@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without a visible GPU, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def plan_error(cfg, check_devices: bool = True) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        plan_launch(cfg, check_devices=check_devices)
    return info.value


# --------------------------------------------------------------------------- CLI runs, started in the background
#
# Each CLI run starts a fresh interpreter; they run in background threads from the start of the module so
# that their start-up overlaps the in-process tests, and the tests at the end of the file read their results.

def cli_cases(root):
    """name: (command, overrides)."""
    return {
        "plan-qlora-fsdp-8gpu": ("plan", ["model=llama3.1-8b", "method=qlora", "strategy=fsdp", "launcher.device=cuda",
                                          "launcher.nproc_per_node=8", f"output_dir={root / 'plan-qlora'}"]),
        "plan-full-zero3": ("plan", ["method=full", "strategy=zero3", "launcher.device=cpu",
                                     f"output_dir={root / 'plan-zero3'}"]),
        "plan-70b-qlora-2x48": ("plan", ["model=llama3.1-70b", "method=qlora", "strategy=fsdp", "launcher.device=cuda",
                                         "launcher.nproc_per_node=2", "launcher.gpu_memory_gib=48",
                                         "launcher.host_memory_gib=256", f"output_dir={root / 'plan-70b'}"]),
        "plan-auto-micro-batch": ("plan", [*AUTO_1B, "launcher.device=cuda", "launcher.nproc_per_node=1",
                                           "launcher.gpu_memory_gib=24", "train.seq_len=2048",
                                           "train.micro_batch_size=auto", f"output_dir={root / 'plan-auto'}"]),
    }


@pytest.fixture(scope="module", autouse=True)
def cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    runs = {}
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        for name, (command, overrides) in cli_cases(root).items():
            runs[name] = pool.submit(run_shardtune, command, *overrides, check=False)

        class Runs:
            path = root

            def __getitem__(self, name):
                return runs[name].result()

        yield Runs()


# --------------------------------------------------------------------------- plan_launch: machine-dependent fields


def test_cpu_plan_resolves_precision_workers_and_device(tmp_path, no_gpu):
    cfg = compose_cfg(values={"launcher.cpu_workers": 3, "output_dir": str(tmp_path / "run")})
    assert cfg.train.precision == "auto" and cfg.launcher.nproc_per_node is None and cfg.launcher.device == "auto"
    before = OmegaConf.to_container(cfg)
    plan = plan_launch(cfg)
    assert (plan.device_type, plan.nproc_per_node, plan.world_size) == ("cpu", 3, 3)
    assert plan.config.train.precision == "fp32"
    assert plan.config.launcher.nproc_per_node == 3 and plan.config.launcher.device == "cpu"
    assert plan.config_path == tmp_path / "run" / "config.yaml"
    assert not (tmp_path / "run").exists()  # planning writes nothing
    assert OmegaConf.to_container(cfg) == before  # and leaves the config it was given as it was


def test_explicit_precision_and_nproc_are_kept(tmp_path):
    cfg = compose_cfg(values={"launcher.device": "cpu", "launcher.nproc_per_node": 2, "launcher.cpu_workers": 5,
                              "train.precision": "bf16", "output_dir": str(tmp_path)})
    plan = plan_launch(cfg)
    assert plan.nproc_per_node == 2 and plan.config.train.precision == "bf16"


def test_single_node_command_is_standalone_and_ends_with_the_worker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(values={"launcher.device": "cpu", "launcher.cpu_workers": 2, "output_dir": "runs/relative"})
    plan = plan_launch(cfg)
    config_path = tmp_path / "runs" / "relative" / "config.yaml"
    assert plan.config_path.is_absolute() and plan.config_path == config_path
    assert plan.command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in plan.command
    assert "--standalone" in plan.command
    rendezvous_flags = ("--nnodes", "--node-rank", "--master-addr", "--master-port")
    assert not any(arg.startswith(rendezvous_flags) for arg in plan.command)
    assert plan.command[-3:] == WORKER_TAIL + [str(config_path)]
    assert plan.command_line().endswith(f"-m shardtune.trainer.worker {config_path}")


def test_multi_node_command_names_the_rendezvous(tmp_path):
    cfg = compose_cfg(values={"launcher.device": "cpu", "launcher.nproc_per_node": 2, "launcher.nnodes": 3,
                              "launcher.node_rank": 1, "launcher.master_addr": "10.0.0.7",
                              "launcher.master_port": 29611, "output_dir": str(tmp_path)})
    plan = plan_launch(cfg)
    assert plan.world_size == 6
    assert "--standalone" not in plan.command
    for flag in ("--nproc-per-node=2", "--nnodes=3", "--node-rank=1", "--master-addr=10.0.0.7", "--master-port=29611"):
        assert flag in plan.command
    assert plan.command[-3:] == WORKER_TAIL + [str(tmp_path / "config.yaml")]


def test_multi_node_without_a_port_uses_the_default_rendezvous_port(tmp_path):
    cfg = compose_cfg(values={"launcher.device": "cpu", "launcher.nproc_per_node": 1, "launcher.nnodes": 2,
                              "output_dir": str(tmp_path)})
    command = plan_launch(cfg).command
    assert "--master-port=29500" in command and "--standalone" not in command


def test_torchrun_command_alone(tmp_path):
    cfg = compose_cfg("launcher.nproc_per_node=4")
    command = torchrun_command(cfg, tmp_path / "config.yaml")
    assert command == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone",
                       "-m", "shardtune.trainer.worker", str(tmp_path / "config.yaml")]


def test_global_batch_size_counts_every_node(tmp_path):
    two_nodes = {"launcher.device": "cpu", "launcher.nproc_per_node": 2, "launcher.nnodes": 2,
                 "train.micro_batch_size": 4, "output_dir": str(tmp_path)}
    good = compose_cfg(values={**two_nodes, "train.global_batch_size": 16})
    assert plan_launch(good).world_size == 4
    bad = compose_cfg(values={**two_nodes, "train.global_batch_size": 8})
    error = plan_error(bad)
    assert error.key == "train.global_batch_size"
    assert "8 != micro_batch_size 4 x grad_accum 1 x world size 4 = 16" in str(error)


def test_plan_launch_runs_the_validation_rules(tmp_path):
    on_cpu = {"launcher.device": "cpu", "output_dir": str(tmp_path)}
    error = plan_error(compose_cfg("method=qlora", "strategy=zero2", values=on_cpu))
    assert error.key == "strategy" and "strategies that fit qlora: ddp, fsdp" in str(error)
    error = plan_error(compose_cfg(values={**on_cpu, "train.precision": "fp16"}))
    assert error.key == "train.precision"


# --------------------------------------------------------------------------- devices and worker counts


def test_cuda_without_a_gpu_is_refused_for_training_but_plannable(tmp_path, no_gpu):
    values = {"launcher.device": "cuda", "launcher.nproc_per_node": 8, "output_dir": str(tmp_path)}
    error = plan_error(compose_cfg(values=values))
    assert error.key == "launcher.device" and "no GPU" in str(error)
    cfg = compose_cfg(values=values)
    plan = plan_launch(cfg, check_devices=False)
    assert (plan.device_type, plan.nproc_per_node, plan.world_size) == ("cuda", 8, 8)
    assert plan.config.train.precision == "bf16"
    assert "--nproc-per-node=8" in plan.command


def test_planning_cuda_without_a_gpu_needs_nproc_per_node(tmp_path, no_gpu):
    cfg = compose_cfg(values={"launcher.device": "cuda", "output_dir": str(tmp_path)})
    error = plan_error(cfg, check_devices=False)
    assert error.key == "launcher.nproc_per_node"


def test_more_workers_than_visible_gpus_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = compose_cfg(values={"launcher.device": "cuda", "launcher.nproc_per_node": 4, "output_dir": str(tmp_path)})
    error = plan_error(cfg)
    assert error.key == "launcher.nproc_per_node" and "only 2 GPUs" in str(error)


def test_auto_device_without_a_gpu_is_cpu(no_gpu):
    assert detect_device("auto") == "cpu"
    assert detect_device("cpu") == "cpu"
    with pytest.raises(ConfigError) as info:
        detect_device("cuda")
    assert info.value.key == "launcher.device"
    assert detect_device("cuda", check_devices=False) == "cuda"


def test_unknown_device_is_refused():
    with pytest.raises(ConfigError) as info:
        detect_device("tpu")
    assert info.value.key == "launcher.device" and "'tpu'" in str(info.value)


@pytest.mark.parametrize("values, key", [
    ({"launcher.nproc_per_node": 0}, "launcher.nproc_per_node"),
    ({"launcher.nproc_per_node": -2}, "launcher.nproc_per_node"),
    ({"launcher.cpu_workers": 0}, "launcher.cpu_workers"),  # cpu_workers is what set the count
])
def test_fewer_than_one_worker_is_refused(tmp_path, values, key):
    error = plan_error(compose_cfg(values={"launcher.device": "cpu", "output_dir": str(tmp_path), **values}))
    assert error.key == key and "must be >= 1" in str(error)


# --------------------------------------------------------------------------- write_run_config


def planned(*overrides, values: dict):
    """The launch plan of a config planned for CPU workers."""
    return plan_launch(compose_cfg(*overrides, values={"launcher.device": "cpu", **values}))


def test_run_config_is_resolved_and_reloads_into_typed_nodes(tmp_path):
    plan = planned(values={"output_dir": f"{tmp_path}/${{model.name}}-${{method.name}}", "train.seq_len": 128})
    write_run_config(plan)
    path = tmp_path / "tiny-lora" / "config.yaml"
    assert plan.config_path == path and path.is_file()
    text = path.read_text()
    assert "${" not in text
    assert not list(path.parent.glob("*.tmp"))
    raw = OmegaConf.load(path)
    assert raw.output_dir == str(tmp_path / "tiny-lora")
    assert raw.train.precision == "fp32" and raw.launcher.nproc_per_node == 2 and raw.launcher.device == "cpu"
    assert os.path.isdir(raw.model.tokenizer) and os.path.isfile(raw.data.path)

    loaded = load_resolved(path)
    assert OmegaConf.get_type(loaded.train) is TrainConfig
    assert OmegaConf.get_type(loaded.method) is LoraMethodConfig
    assert loaded.train.seq_len == 128 and loaded.method.rank == 16
    with pytest.raises(ValidationError):
        loaded.train.seq_len = "abc"
    with pytest.raises(ValidationError):
        loaded.method.rank = "sixteen"
    assert OmegaConf.to_container(loaded, resolve=True) == OmegaConf.to_container(plan.config, resolve=True)


def test_run_config_names_the_cache_entry_the_launcher_tokenized(tmp_path):
    plan = planned(values={"output_dir": str(tmp_path / "run")})
    write_run_config(plan, cache_entry=tmp_path / "cache" / "0123abcd")
    assert load_resolved(plan.config_path).data.cache_entry == str(tmp_path / "cache" / "0123abcd")


def test_deepspeed_run_config_reloads_with_the_deepspeed_schema(tmp_path):
    plan = planned("method=full", "strategy=zero3_offload", values={"output_dir": str(tmp_path)})
    write_run_config(plan)
    loaded = load_resolved(plan.config_path)
    assert OmegaConf.get_type(loaded.strategy) is DeepSpeedStrategyConfig
    assert loaded.strategy.stage == 3 and loaded.strategy.offload_param is True
    with pytest.raises(ValidationError):
        loaded.strategy.stage = "three"


def make_marker(output_dir, marker):
    if marker == "metrics.jsonl":
        (output_dir / marker).write_text('{"step": 1, "loss": 2.5}\n')
        return output_dir / marker
    (output_dir / marker).mkdir()
    (output_dir / marker / "model.safetensors").write_text("weights")
    return output_dir / marker / "model.safetensors"


@pytest.mark.parametrize("marker", RUN_OUTPUTS)
def test_fresh_start_over_an_earlier_run_is_refused_and_touches_nothing(tmp_path, marker):
    assert set(RUN_OUTPUTS) == {"metrics.jsonl", "checkpoints", "final"}
    marker_file = make_marker(tmp_path, marker)
    (tmp_path / "config.yaml").write_text("earlier: run\n")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    plan = planned(values={"output_dir": str(tmp_path), "resume": "none"})
    with pytest.raises(ConfigError) as info:
        write_run_config(plan)
    assert info.value.key == "output_dir" and "resume=auto" in str(info.value)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    assert marker_file.exists()


@pytest.mark.parametrize("marker", RUN_OUTPUTS)
def test_resume_auto_may_write_over_an_earlier_run(tmp_path, marker):
    marker_file = make_marker(tmp_path, marker)
    content = marker_file.read_bytes()
    plan = planned(values={"output_dir": str(tmp_path), "resume": "auto"})
    write_run_config(plan)
    assert load_resolved(plan.config_path).resume == "auto"
    assert marker_file.read_bytes() == content


def test_a_directory_without_run_outputs_is_fine(tmp_path):
    # Hydra creates output_dir (and launcher.log in it) before the launcher runs.
    (tmp_path / "launcher.log").write_text("")
    plan = planned(values={"output_dir": str(tmp_path)})
    write_run_config(plan)
    assert plan.config_path.is_file()


# --------------------------------------------------------------------------- the command line


def memory_rows(stdout: str) -> dict:
    """{component: GiB} from the first memory table `shardtune plan` prints (per GPU, training step)."""
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"^(\w+)\s+(\d+\.\d+)\s", line)
        if match:
            rows[match.group(1)] = float(match.group(2))
            if match.group(1) == "total":
                break
    return rows


def test_plan_for_eight_gpus_prints_world_size_command_and_memory(cli):
    result = cli["plan-qlora-fsdp-8gpu"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "world size: 8 (1 node(s) x 8 cuda worker(s)); precision bf16" in out
    command = next(line for line in out.splitlines() if line.startswith("command: "))
    config_path = cli.path / "plan-qlora" / "config.yaml"
    assert "-m torch.distributed.run --nproc-per-node=8 --standalone" in command
    assert command.endswith(f"-m shardtune.trainer.worker {config_path}")
    rows = memory_rows(out)
    assert {"weights", "grads", "optimizer", "activations", "total"} <= set(rows)
    parts = sum(value for name, value in rows.items() if name != "total")
    assert rows["total"] == pytest.approx(parts, abs=0.01 * len(rows))
    assert 0 < rows["weights"] < rows["total"]
    assert "DeepSpeed config" not in out
    assert "fits: unknown, " in out and "set launcher.gpu_memory_gib to check" in out  # no GPU here, none given
    assert not (cli.path / "plan-qlora").exists()  # plan leaves output_dir alone


def test_plan_says_whether_the_run_fits_and_what_would(cli):
    result = cli["plan-70b-qlora-2x48"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for table in ("per GPU, training step (steady state)", "per GPU, while the model loads", "host RAM per node (2 worker(s))"):
        assert table in out
    peak = float(re.search(r"^peak per GPU: (\d+\.\d+) GiB", out, re.M).group(1))
    assert f"fits: no, peak {peak:.1f} of 48.0 GiB per GPU (launcher.gpu_memory_gib), world size 2; host RAM " in out
    assert "of 256.0 GiB per node (launcher.host_memory_gib)" in out
    alternatives = out[out.index("what would fit, each estimated again:"):].splitlines()[1:]
    assert any(line.strip().startswith("train.activation_checkpointing=true ") for line in alternatives)


def test_plan_prints_what_micro_batch_auto_chose(cli):
    result = cli["plan-auto-micro-batch"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    match = re.search(r"^micro batch: auto -> (\d+) \(estimated peak (\d+\.\d) of 24\.0 GiB per GPU; a trial step on "
                      r"the GPU confirms it\)$", out, re.M)
    assert match, out
    size, peak = int(match.group(1)), float(match.group(2))
    assert f"global batch: {size} x 1 x 1 = {size} sequences of <= 2048 tokens" in out
    assert f"micro_batch_size {size} x seq_len 2048" in out  # the memory table is the chosen size's
    assert "fits: yes, " in out and peak <= 24
    # The next power of two would not fit.
    twice = compose_cfg(*AUTO_1B, values={"launcher.device": "cuda", "train.precision": "bf16", "train.seq_len": 2048,
                                          "train.micro_batch_size": 2 * size})
    assert estimate_memory(twice, 1).peak_per_gpu / GIB > 24


def test_plan_for_zero3_prints_the_deepspeed_json(cli):
    result = cli["plan-full-zero3"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    start = out.index("DeepSpeed config:\n") + len("DeepSpeed config:\n")
    deepspeed, _ = json.JSONDecoder().raw_decode(out[start:])
    assert deepspeed["zero_optimization"]["stage"] == 3
    assert deepspeed["train_micro_batch_size_per_gpu"] == 4 and deepspeed["gradient_accumulation_steps"] == 1
    assert deepspeed["bf16"]["enabled"] is False and deepspeed["fp16"]["enabled"] is False  # fp32 on CPU
    assert deepspeed["bf16"]["check_grad_overflow"] is False  # the loop checks the gradient norm instead
    assert "total" in memory_rows(out)
    assert not (cli.path / "plan-zero3").exists()
