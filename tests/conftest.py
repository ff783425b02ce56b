"""Shared test helpers: run the real `shardtune` command and read what it wrote."""
import copy
import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from shardtune.config import register_configs
from shardtune.run_dir import SUMMARY_FILE, read_metrics

# The suite runs two pytest workers on 2 cores, each starting training processes: a torch computation in a test
# process (reloading a model, generating, packing checks) or in a one-process command (eval, export) with a thread per
# core has its OpenMP threads wait on each other (measured under load: tests/unit/test_generate.py 30 s with two
# threads, 9 s with one). Training workers get one thread each from the launcher already.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
torch.set_num_threads(1)

# Small and fast, but every part of the loop runs: 2 gloo workers, tiny Llama, bundled data.
FAST = ["train.max_steps=8", "train.seq_len=64", "train.micro_batch_size=4", "train.log_interval=1",
        "train.eval_interval=0", "optim.lr=3e-3", "optim.warmup_steps=2"]


@functools.cache
def _composed(overrides: tuple):
    register_configs()
    with initialize_config_module(config_module="shardtune.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def compose_cfg(*overrides: str, values: dict = None):
    """The config Hydra composes from `overrides` (composed once per distinct list: a compose costs about
    0.1 s; each call gets its own copy), with `values` ({dotted key: value}) then set on the typed nodes,
    which check types as Hydra's overrides would."""
    cfg = copy.deepcopy(_composed(overrides))
    for key, value in (values or {}).items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


_server = None


def cli_server():
    """This pytest worker's ShardtuneServer (tests/cli_server.py), started at its first command: each command line
    runs in a fork of one process that imported torch, transformers, datasets and peft, instead of importing them
    again (about 4 s of CPU a command on 2 cores). The commands' torchrun workers start fresh as always."""
    global _server
    if _server is None:
        from cli_server import ShardtuneServer
        _server = ShardtuneServer()
    return _server


def pytest_sessionfinish(session):
    if _server is not None:
        _server.close()


def run_shardtune(command: str, *overrides: str, check: bool = True, env: dict = None) -> subprocess.CompletedProcess:
    """`shardtune command *overrides` in this directory, as the console script runs it (W&B offline)."""
    threads = {} if command == "train" else ONE_THREAD  # train: the launcher sets the workers' threads
    return cli_server().run(command, *overrides, cwd=os.getcwd(), check=check, env={**threads, **(env or {})})


def train_losses(output_dir) -> dict:
    """{step: loss} of every logged training step."""
    return {row["step"]: row["loss"] for row in read_metrics(output_dir) if "loss" in row}


def final_val_loss(output_dir) -> float:
    return [row["val/loss"] for row in read_metrics(output_dir) if "val/loss" in row][-1]


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny model's byte-level tokenizer (shardtune/assets/tiny-tokenizer)."""
    from transformers import AutoTokenizer

    from shardtune.config import asset_path
    return AutoTokenizer.from_pretrained(asset_path("tiny-tokenizer"))


@pytest.fixture(scope="session")
def fast_overrides():
    return list(FAST)


# Runs that several test files read (the pair matrix, export, options): each is trained once per test session,
# by whichever pytest worker asks first, and the others wait for it. Every one saves a checkpoint at step 4 (which
# changes no loss) for export's checkpoint cases; LoRA dropout is off so that strategies can agree step by step.
def _shared_overrides(method: str, strategy: str, *extra: str) -> list:
    no_dropout = [] if method == "full" else ["method.dropout=0"]
    return [f"method={method}", f"strategy={strategy}", *FAST, *no_dropout, "train.save_interval=4",
            "train.keep_checkpoints=0", *extra]


SHARED_RUNS = {
    **{f"{method}-{strategy}": _shared_overrides(method, strategy) for method, strategy in [
        ("full", "zero1"), ("full", "zero2"), ("full", "zero3"), ("full", "zero3_offload"), ("full", "ddp"),
        ("full", "fsdp"), ("lora", "fsdp"), ("qlora", "ddp"), ("qlora", "fsdp")]},
    "lora-ddp": _shared_overrides("lora", "ddp", "logger=wandb"),  # offline (WANDB_MODE=offline in run_shardtune)
    "qlora8-ddp": _shared_overrides("qlora", "ddp", "method.bits=8"),
}


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """shared_run(name) -> the run directory of SHARED_RUNS[name], trained if no worker has yet."""
    import fcntl
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, above each worker's own
    root = root / "shared-runs"
    root.mkdir(exist_ok=True)

    def get(name: str) -> Path:
        run_dir = root / name
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not (run_dir / SUMMARY_FILE).exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # a run that died half-way
                run_shardtune("train", *SHARED_RUNS[name], f"output_dir={run_dir}")
        return run_dir
    return get


# The files that take minutes, longest first: pytest-xdist (make test: -n 2 --dist loadfile) hands out files in
# collection order, so starting these first keeps both workers busy to the end instead of one finishing alone.
SLOW_FILES = ["tests/dist/test_matrix.py", "tests/sweep/test_optuna_sweeps.py", "tests/cluster/test_slurm.py",
              "tests/dist/test_learning.py", "tests/sweep/test_grid_sweeps.py", "tests/cluster/test_two_hosts.py",
              "tests/dist/test_options.py", "tests/dist/test_export.py", "tests/dist/test_resume.py",
              "tests/dist/test_preemption.py"]


# The tiers, by the folder a test file is in (pyproject.toml documents the markers; tests/faults is dist). `make test-fast` runs the unit
# tier and the dist tests marked `fast`; `make test` runs everything.
TIERS = {"unit": "unit", "dist": "dist", "sweep": "dist", "faults": "dist", "cluster": "cluster", "gpu": "gpu"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = Path(item.path).parent.name
        if folder not in TIERS:
            raise pytest.UsageError(f"{item.path}: a test file belongs in one of tests/{{{','.join(TIERS)}}}/")
        item.add_marker(TIERS[folder])

    def rank(item):
        path = item.nodeid.split("::")[0]
        return SLOW_FILES.index(path) if path in SLOW_FILES else len(SLOW_FILES)
    items.sort(key=rank)  # stable: within a file, and among the other files, the order stays
