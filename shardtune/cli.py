"""`shardtune <command> [hydra overrides]`: the commands users run.

train  validate the composed config, write the run directory, start torchrun workers
       (cluster=slurm: write an sbatch script and submit it; one srun task per node runs torchrun)
plan   print what `train` would run (world size, torchrun command, DeepSpeed JSON, memory per GPU and per node,
       whether it fits and what would) and stop; plan for GPUs this machine lacks with launcher.device=cuda
       launcher.nproc_per_node=N launcher.gpu_memory_gib=G;
       cluster=slurm prints the sbatch script and each node's torchrun line, and submits nothing
data prepare [--rebuild]                      tokenize the data once into the cache (data.cache_dir) ahead of training
data preview [--split S] [--examples N]       show prepared examples with masked text marked, and the row counts
train -m key=a,b other=c,d ...   a sweep: every trial a whole run in sweeps/<name>/trial-N (hydra/sweeper=optuna for
       Bayesian search; cluster=slurm for a job per trial); the same command again skips finished trials

Commands on an existing run directory take plain arguments (--help for each), not Hydra overrides:

export <run_dir> [--checkpoint step-N|PATH] [--output DIR] [--dtype bf16|fp16|fp32] [--force]
       write the trained model as a Hugging Face directory that transformers loads without peft
       (LoRA/QLoRA merged, full fine-tunes consolidated); default <run_dir>/export
eval <run_dir> [--checkpoint step-N|PATH] [--split test|validation] [--max-new-tokens N] [--compare-base] ...
       loss, perplexity, and greedy-generation exact match and ROUGE-L on held-out rows; writes <run_dir>/eval.json
status <run_dir>   the Slurm job of a run submitted with cluster=slurm: its state, log and last logged step
cancel <run_dir>   cancel that Slurm job (scancel)
sweep report <sweep_dir>   results.csv, results.md and objective.png of a sweep; prints the table, best first
"""
import importlib
import json
import shutil
import sys
import tempfile

import hydra
from omegaconf import DictConfig

from .config import register_configs
from .errors import ConfigError, DataError
from .strategy_registry import strategy_spec

USAGE = __doc__


def train(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        from .sweep.trial import run_trial
        return run_trial(cfg)  # a trial of a sweep: the sweeper gets its objective
    from .launcher.launch import launch
    launch(cfg)


def plan(cfg: DictConfig) -> None:
    from .launcher.fit import fit_report
    from .launcher.memory import estimate_memory
    from .launcher.torchrun import plan_launch
    launch = plan_launch(cfg, check_devices=False)
    cfg = launch.config
    estimate = estimate_memory(cfg, launch.world_size)
    print(f"method={cfg.method.name} strategy={cfg.strategy.name} model={cfg.model.name}")
    print(f"world size: {launch.world_size} ({cfg.launcher.nnodes} node(s) x {launch.nproc_per_node} "
          f"{launch.device_type} worker(s)); precision {cfg.train.precision}")
    if launch.micro_batch is not None:
        print(f"micro batch: {launch.micro_batch.describe()}")
    print(f"global batch: {cfg.train.micro_batch_size} x {cfg.train.grad_accum} x {launch.world_size} = "
          f"{cfg.train.micro_batch_size * cfg.train.grad_accum * launch.world_size} sequences of <= {cfg.train.seq_len} tokens")
    print(f"fast path: {estimate.fast_path}")
    if cfg.cluster.name == "slurm":
        from .cluster.slurm import SCRIPT_NAME, SLURM_DIR, batch_script
        print(f"each node (one srun task per node): {launch.command_line()}")
        print(f"sbatch script ({launch.output_dir / SLURM_DIR / SCRIPT_NAME}; nothing submitted):")
        print(batch_script(cfg, launch.config_path, sys.executable))
    else:
        print(f"command: {launch.command_line()}")
    if strategy_spec(cfg.strategy).kind == "deepspeed":
        from .precision import DTYPES
        from .trainer.strategies.deepspeed import deepspeed_config
        print("DeepSpeed config:\n" + json.dumps(deepspeed_config(cfg, DTYPES[cfg.train.precision]), indent=2))
    print(estimate.format())
    print(fit_report(cfg, launch.world_size))


def data_prepare(cfg: DictConfig) -> None:
    from .launcher.launch import tokenize_data
    from .launcher.validation import validate
    validate(cfg, "cpu", 1)
    tokenize_data(cfg, rebuild="--rebuild" in FLAGS)


def data_preview(cfg: DictConfig) -> None:
    from .data.preview import format_preview
    from .launcher.launch import tokenize_data
    from .launcher.validation import validate
    validate(cfg, "cpu", 1)
    prepared, tokenizer, _ = tokenize_data(cfg)
    split = FLAGS.get("--split", "train")
    if split not in ("train", "validation", "test"):
        sys.exit(f"shardtune: --split must be train, validation or test, got {split!r}")
    print(format_preview(prepared, tokenizer, split, int(FLAGS.get("--examples", 3))))


COMMANDS = {"train": train, "plan": plan, "data prepare": data_prepare, "data preview": data_preview}
# Commands that only read: Hydra must not create a run directory for them.
READ_ONLY = ("plan", "data prepare", "data preview")
FLAGS = {}  # --name [value] options of the data commands, taken off argv before Hydra parses it


def take_flags(argv: list, names: dict) -> dict:
    """Remove `--name value` (or `--name` for switches, names[name] False) from argv; return them."""
    found = {}
    for name, takes_value in names.items():
        if name in argv:
            index = argv.index(name)
            found[name] = argv.pop(index + 1) if takes_value and index + 1 < len(argv) else True
            argv.pop(index)
    return found


def with_model_group(argv: list) -> list:
    """argv with `model=pretrained` added where the overrides set model.name_or_path but choose no model group.

    The default group (model=tiny) builds its own random model with its own tokenizer and would ignore the path;
    model=pretrained fine-tunes the model at the path with its own tokenizer and config. An experiment's choice of
    model group gives way to it as well, as to any model= on the command line. Arguments Hydra's override parser
    cannot read are left for Hydra to report.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    candidates = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return argv
    keys = {override.key_or_group for override in overrides}
    names_a_model = any(override.key_or_group == "model.name_or_path" and not override.is_delete()
                        and (override.is_sweep_override() or override.value() is not None) for override in overrides)
    if names_a_model and "model" not in keys:
        # Among the other overrides: argparse takes them as one run of arguments (not split by -m or --cfg job).
        first = argv.index(candidates[0])
        return [*argv[:first], "model=pretrained", *argv[first:]]
    return argv


# Commands that read an existing run directory parse their own arguments (argparse, no Hydra): name ->
# "module:function", called with the arguments after the name; imported only when run.
ARGPARSE_COMMANDS = {"export": "shardtune.export:export_command",
                     "eval": "shardtune.evaluation.command:eval_command",
                     "status": "shardtune.cluster.commands:status_command",
                     "cancel": "shardtune.cluster.commands:cancel_command",
                     "sweep": "shardtune.sweep.report:sweep_command"}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(USAGE)
        return
    command = sys.argv.pop(1)
    if command in ARGPARSE_COMMANDS:
        module, function = ARGPARSE_COMMANDS[command].split(":")
        getattr(importlib.import_module(module), function)(sys.argv[1:])
        return
    if command == "data" and len(sys.argv) > 1:
        command = f"data {sys.argv.pop(1)}"
        FLAGS.update(take_flags(sys.argv, {"--rebuild": False, "--split": True, "--examples": True}))
    if command not in COMMANDS:
        sys.exit(f"shardtune: unknown command {command!r}\n{USAGE}")
    if command == "train" and ("-m" in sys.argv or "--multirun" in sys.argv):
        from .sweep.naming import default_sweep_dir
        if not any(arg.startswith("hydra.sweep.dir=") for arg in sys.argv):
            sys.argv.append(f"hydra.sweep.dir={default_sweep_dir(sys.argv[1:])}")
    sys.argv[1:] = with_model_group(sys.argv[1:])
    scratch = None
    if command in READ_ONLY:
        # Hydra creates its run directory before the task runs; plan must leave output_dir untouched.
        scratch = tempfile.mkdtemp(prefix="shardtune-plan-")
        sys.argv.append(f"hydra.run.dir={scratch}")
    register_configs()
    from .quiet import quiet_libraries
    quiet_libraries()
    task = COMMANDS[command]

    def guarded(cfg: DictConfig):
        try:
            return task(cfg)
        except ConfigError as error:
            sys.exit(f"shardtune: config error: {error}")
        except DataError as error:
            sys.exit(f"shardtune: data error: {error}")

    guarded.__module__ = __name__  # Hydra resolves config_path against the task's module
    try:
        hydra.main(config_path="conf", config_name="config", version_base="1.3")(guarded)()
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
