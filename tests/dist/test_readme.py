"""Every command in README.md's code blocks runs here, so that the README cannot drift from the code.

The commands are read from the README itself, and TABLE says how each one is tested:
- run as written, with `...` standing for tiny settings and the README's example files and paths (train.jsonl,
  /models/llama-3.2-1b, runs/x, step-400, ...) mapped to ones this test writes;
- `shardtune train` with data settings runs as `shardtune data preview` with the same overrides: the launcher's
  checks of the config, the model and its tokenizer, and the same data reading and tokenization, without workers;
- training that needs GPUs, the hub, a cluster or minutes runs as `shardtune plan` with the same overrides;
- or not run, with the reason (Slurm).
A command the README gains, loses or changes without TABLE following fails test_every_readme_command_is_in_the_table.
One real run, the README's Optuna sweep cut to one 2-step trial, is the `runs/x` and `<sweep_dir>` that the eval,
export, resume and sweep report commands read. The commands run through tests/cli_server.py, which imports the
libraries once and runs each command line in a fork, as the `shardtune` script would run it: about 1 s a command
instead of 5.
"""
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import pytest
from cli_server import ShardtuneServer

from shardtune.config import asset_path
from shardtune.run_dir import read_metrics

ROOT = Path(__file__).resolve().parents[2]

# Reading the commands. A code block is a command block when its first line that is not a comment starts with
# one of these programs; its other lines must then be commands, continuations (after a line ending in `\`) or
# comments. Other blocks (the run directory's tree) hold no commands: a line starting with a program there fails.
PROGRAMS = ("shardtune", "make", "srun", "sbatch", "scancel", "python", "pip", "torchrun", "wandb", "bash")


def without_comment(line: str) -> str:
    """The line up to a `#` that starts a word outside quotes (shell comment syntax)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def code_blocks(text: str):
    """(number of the block's first line, its lines) of every ``` block."""
    block, start = None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if block is not None:
                yield start, block
            block, start = ([] if block is None else None), number + 1
        elif block is not None:
            block.append(line)


def first_word(line: str) -> str:
    return line.split()[0] if line.split() else ""


def readme_commands(text: str) -> Dict[str, int]:
    """{command: its line in the README}: continuations joined with one space, comments left out."""
    commands = {}
    for start, lines in code_blocks(text):
        codes = [without_comment(line).rstrip() for line in lines]
        is_commands = first_word(next((code for code in codes if code.strip()), "")) in PROGRAMS
        parts, first_line = [], 0
        for number, code in enumerate(codes, start):
            if not is_commands:
                assert first_word(code) not in PROGRAMS, f"README.md:{number}: a command in a block of no commands"
                continue
            if not parts:
                if not code.strip():
                    continue  # a blank or comment-only line
                assert first_word(code) in PROGRAMS, f"README.md:{number}: not a command of {PROGRAMS}: {code!r}"
                first_line = number
            parts.append(code.rstrip("\\").strip())
            if not code.endswith("\\"):
                commands[" ".join(part for part in parts if part)] = first_line
                parts = []
        assert not parts, f"README.md:{first_line}: a command continued past the end of its block"
    return commands


# How each command is tested.
TINY = ("train.max_steps=2", "train.seq_len=64", "train.save_interval=2", "train.log_interval=1",
        "train.eval_interval=0")  # what `...` stands for unless an entry says otherwise
RUN_OVERRIDES = ("<the trained run's own overrides>",)  # `...` of the resume command: the run's own command line
CHECKPOINT = "step-2"  # the trained run's checkpoint, for the README's step-400


@dataclass(frozen=True)
class Run:
    """Run the command: `as` "written", or with `shardtune train` replaced by `shardtune <as>` ("data preview",
    "plan"); `...` stands for `dots`, `extra` is appended (a later override wins). The output (stdout and stderr)
    must contain every `expect` (a string, or a regular expression that must match); `check(workspace, output)`
    looks further."""
    as_: str = "written"
    dots: Tuple[str, ...] = TINY
    extra: Tuple[str, ...] = ()
    expect: Tuple = ()
    check: Optional[Callable] = None
    why: str = ""  # why the command runs other than as written, where it does


@dataclass(frozen=True)
class NotRun:
    why: str


@dataclass(frozen=True)
class MakeTarget:
    """The Makefile has `target`, whose recipe runs `runs`."""
    target: str
    runs: str


def pattern(text: str) -> re.Pattern:
    return re.compile(text, re.MULTILINE)


def assert_resumed(workspace: Path, output: str) -> None:
    steps = [row["step"] for row in read_metrics(trained_run_dir(workspace)) if "loss" in row]
    assert steps == [1, 2, 3], steps  # steps 1-2 of the first run, then only step 3: none logged twice


def assert_eval_json(name: str, split: str, compared: bool):
    def check(workspace: Path, output: str) -> None:
        results = json.loads((trained_run_dir(workspace) / name).read_text())
        assert results["split"] == split and results["model"]["loss"] > 0 and ("base" in results) == compared
    return check


def assert_model_dir(relative: str, dtype: str):
    def check(workspace: Path, output: str) -> None:
        directory = workspace / relative.format(run=trained_run_dir(workspace).relative_to(workspace))
        config = json.loads((directory / "config.json").read_text())
        assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()
        assert config.get("dtype", config.get("torch_dtype")) == dtype, config
    return check


def assert_trial_trained(workspace: Path, output: str) -> None:
    run_dir = trained_run_dir(workspace)
    assert (run_dir / "checkpoints/step-2/COMPLETE").is_file() and (run_dir / "final").is_dir()
    assert json.loads((run_dir / "trial.json").read_text())["status"] == "completed"


def assert_six_plans(workspace: Path, output: str) -> None:
    assert output.count("| lora r=8 |") == output.count("| lora r=16 |") == 3, output


def assert_prepared(workspace: Path, output: str) -> None:
    entry = re.search(r"data prepared in (\S+):", output).group(1)
    assert Path(entry).parent == workspace / "cache" and (Path(entry) / "train").is_dir()


def assert_packed(workspace: Path, output: str) -> None:
    rows, packed = map(int, re.search(r"train_rows (\d+),.*packed_train_rows (\d+)", output).groups())
    assert packed < rows / 2, output  # several 35-token examples per 256-token sequence


OPTUNA = ("shardtune train -m hydra/sweeper=optuna hydra.sweeper.n_trials=20 "
          "'optim.lr=tag(log, interval(1e-5, 1e-3))' 'method.rank=choice(8,16,32)'")
PLAN_SLURM = Run(as_="plan", expect=("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                                     "#SBATCH --time=04:00:00", "nothing submitted"),
                 why="submits a Slurm job; plan prints the sbatch script and submits nothing")
SLURM_TESTS = "tests/cluster/test_slurm.py runs it on a local 2-node Slurm"
ALPACA_SHOWN = pattern(r"^«Instruction: Double \d+\.\nResponse:\n»\d+</s>$")  # prompt masked, answer and EOS trained

TABLE = {
    "make demo": MakeTarget("demo", "shardtune train experiment=demo"),
    "make test": MakeTarget("test", "pytest"),
    # Running
    "shardtune train": Run(as_="plan", extra=TINY, why="a 40-step run; its plan (the same as `plan ...`) shows the defaults",
                           expect=("method=lora strategy=ddp model=tiny", "(1 node(s) x 2 cpu worker(s))")),
    "shardtune train experiment=demo": Run(as_="plan", why="what `make demo` runs (300 steps)",
                                           expect=("method=full strategy=zero2 model=tiny", '"stage": 2')),
    "shardtune train model=llama3.2-1b method=lora strategy=fsdp data.path=train.jsonl train.max_steps=500 "
    "train.micro_batch_size=4 train.seq_len=2048": Run(
        as_="plan", extra=("launcher.device=cuda", "launcher.nproc_per_node=8"),
        why="a hub model on GPUs: planned for 8 of them, from the preset's architecture (nothing downloaded)",
        expect=("method=lora strategy=fsdp model=llama3.2-1b", "1.24B params", "sequences of <= 2048 tokens")),
    "shardtune train model.name_or_path=/models/llama-3.2-1b method=full strategy=zero3 ...": Run(
        as_="data preview", why="full ZeRO-3 training; the preview loads and checks that model and its tokenizer",
        expect=(pattern(r"model llama-3\.2-1b \(/\S+/models/llama-3\.2-1b\): llama, 869,504 params \(869,504 "
                        r"trainable with method=full\); tokenizer /\S+/models/llama-3\.2-1b"),)),
    "shardtune train method=qlora strategy=ddp ...": Run(
        as_="plan", why="QLoRA training is tested by tests/dist/test_matrix.py",
        expect=("method=qlora strategy=ddp model=tiny", "qlora r=16 4-bit")),
    "shardtune train ... --cfg job": Run(expect=(pattern(r"^method:\n  name: lora$"), "max_steps: 2")),
    "shardtune plan ...": Run(expect=("world size: 2", "command: ", "GiB/GPU")),
    "shardtune plan model=llama3.1-8b method=qlora strategy=fsdp launcher.device=cuda launcher.nproc_per_node=8":
        Run(expect=("world size: 8 (1 node(s) x 8 cuda worker(s))", "8.03B params", "4-bit")),
    "shardtune plan model=llama3.1-70b method=qlora strategy=fsdp launcher.device=cuda launcher.nproc_per_node=2 "
    "launcher.gpu_memory_gib=48": Run(expect=(
        "world size: 2 (1 node(s) x 2 cuda worker(s))", "70.55B params", "per GPU, while the model loads",
        "host RAM per node (2 worker(s))", pattern(r"^fits: no, peak \d+\.\d of 48\.0 GiB per GPU"),
        pattern(r"^  train\.activation_checkpointing=true +peak \d+\.\d GiB per GPU"))),
    # Models bigger than one GPU
    "shardtune plan model=llama3.1-70b method=qlora strategy=fsdp train.activation_checkpointing=true "
    "launcher.device=cuda launcher.nproc_per_node=2 launcher.gpu_memory_gib=48": Run(expect=(
        "70.55B params", "4-bit linear weights", "split over 2 GPUs", pattern(r"^fits: yes, peak \d+\.\d of 48\.0 GiB"))),
    "shardtune train model=llama3.1-70b method=lora strategy=fsdp train.activation_checkpointing=true "
    "data.path=train.jsonl": Run(
        as_="plan", extra=("launcher.device=cuda", "launcher.nproc_per_node=8", "launcher.gpu_memory_gib=80"),
        why="70B on eight GPUs: planned for them, from the preset's architecture (nothing downloaded)",
        expect=("world size: 8", "70.55B params", pattern(r"^fits: yes, peak \d+\.\d of 80\.0 GiB"))),
    "shardtune train model=llama3.1-8b method=full strategy=fsdp strategy.cpu_offload=true "
    "train.activation_checkpointing=true data.path=train.jsonl": Run(
        as_="plan", extra=("launcher.device=cuda", "launcher.nproc_per_node=1", "launcher.gpu_memory_gib=141"),
        why="8B on a GPU: planned for one (benchmarks/big_models.sh trains it on an H200)",
        expect=("8.03B params", "in host memory (cpu_offload)", pattern(r"^fits: yes, peak \d+\.\d of 141\.0 GiB"))),
    "shardtune train ... output_dir=runs/x resume=auto": Run(
        dots=RUN_OVERRIDES, extra=("train.max_steps=3",), check=assert_resumed,
        expect=(pattern(r"resuming from \S+/checkpoints/step-2 at step 2"),)),
    # Evaluate, export
    "shardtune eval runs/x --compare-base": Run(expect=("fine-tuned",),
                                                check=assert_eval_json("eval.json", "test", compared=True)),
    "shardtune eval runs/x --checkpoint step-400 --split validation --max-new-tokens 32 --max-examples 500": Run(
        check=assert_eval_json(f"eval-{CHECKPOINT}.json", "validation", compared=False)),
    "shardtune export runs/x": Run(check=assert_model_dir("{run}/export", "bfloat16")),
    "shardtune export runs/x --checkpoint step-400 --dtype fp32 --output /models/x-400 [--force]": Run(
        check=assert_model_dir("models/x-400", "float32")),
    # Clusters
    "shardtune train launcher.nnodes=2 launcher.node_rank=0 launcher.rdzv_endpoint=host0:29500 "
    "launcher.socket_ifname=eth0 output_dir=/shared/runs/x ...": Run(
        as_="plan", why="node 0 of two would wait for node 1; tests/cluster/test_two_hosts.py trains so",
        expect=("world size: 4 (2 node(s) x 2 cpu worker(s))", "--rdzv-endpoint=host0:29500")),
    "shardtune train cluster=slurm cluster.nodes=4 cluster.gpus_per_node=8 cluster.partition=gpu "
    "cluster.time=04:00:00 output_dir=/shared/runs/x ...": PLAN_SLURM,
    "shardtune plan cluster=slurm cluster.nodes=4 ...": Run(  # the same command line as the plan above
        dots=("cluster.gpus_per_node=8", "cluster.partition=gpu", "cluster.time=04:00:00",
              "output_dir=/shared/runs/x", *TINY), expect=PLAN_SLURM.expect),
    "srun --ntasks-per-node=1 shardtune train output_dir=/shared/runs/x ...": NotRun(
        f"runs inside a Slurm allocation; {SLURM_TESTS}"),
    "shardtune status /shared/runs/x": NotRun(f"reads the Slurm job of a cluster=slurm run; {SLURM_TESTS}"),
    "shardtune cancel /shared/runs/x": NotRun(f"cancels the Slurm job of a cluster=slurm run; {SLURM_TESTS}"),
    # Sweeps
    "shardtune train -m optim.lr=1e-4,3e-4,1e-3 method.rank=8,16": Run(
        as_="plan", dots=(), why="6 training runs (tests/sweep/test_grid_sweeps.py runs a grid); planned, every "
                                 "trial's config is composed and checked",
        expect=("#5 : optim.lr=0.001 method.rank=16",), check=assert_six_plans),
    OPTUNA: Run(extra=("data.path=train.jsonl", *TINY, "hydra.sweeper.n_trials=1"),
                why="one 2-step trial: the run the eval, export, resume and sweep report commands read",
                expect=(pattern(r"trial 0 completed: val_loss = \d"),), check=assert_trial_trained),
    "shardtune train -m cluster=slurm ...": NotRun(f"a Slurm job per trial; {SLURM_TESTS} (a 2-trial sweep)"),
    "shardtune sweep report <sweep_dir>": Run(expect=("Trials: 1 (1 completed)", "Best trial: 0")),
    # Data
    "shardtune train data.path=train.jsonl": Run(as_="data preview", expect=("rows_read 40", ALPACA_SHOWN)),
    "shardtune train data.path=chats.parquet data.format=chat": Run(
        as_="data preview", expect=(pattern(r"^<\|assistant\|>\n»\d+</s>\n«<\|user\|>$"),)),  # each reply trains
    "shardtune train data.path=corpus/ data.format=completion": Run(
        as_="data preview", expect=("rows_read 23", "validation_rows 3", pattern(r"^corpus line \d+</s>$"))),
    "shardtune train data.path=books/ data.format=completion data.too_long=split": Run(
        as_="data preview", extra=("train.seq_len=64",), expect=("train_split_chunks", "(64 tokens, 64 trained)")),
    "shardtune train data.path=pieces.jsonl data.format=segments": Run(
        as_="data preview", expect=(pattern(r"^«Q: double \d+\n»A: \d+$"),)),
    "shardtune train data.path=tatsu-lab/alpaca data.split=train data.revision=<commit>": Run(
        as_="plan", why="a hub dataset: plan checks the keys offline; reading it would download it",
        expect=("method=lora strategy=ddp model=tiny",)),
    "shardtune train data.format=chat 'data.columns={messages: conversations, role: from, content: value}' ...":
        Run(as_="data preview", dots=("data.path=sharegpt.jsonl",),
            expect=("ignored fields: id", pattern(r"^«<\|user\|>\nDouble \d+\.</s>\n<\|assistant\|>\n»\d+</s>$"))),
    "shardtune train ... data.columns.output=answer": Run(as_="data preview", dots=("data.path=answers.jsonl",),
                                                          expect=(ALPACA_SHOWN,)),
    "shardtune train ... data.train_on_roles=[user,assistant] data.train_on_eos=last data.mask_history=true": Run(
        as_="data preview", dots=("data.path=chats.parquet", "data.format=chat"),
        expect=(pattern(r"^«<\|user\|>\nDouble \d+\.</s>\n<\|assistant\|>\n\d+</s>\n<\|user\|>\n»And \d+\?«</s>\n"
                        r"<\|assistant\|>\n»\d+</s>$"),)),  # only the last exchange; EOS only at the end
    "shardtune train ... data.on_bad_row=skip": Run(
        as_="data preview", dots=("data.path=with_a_bad_row.jsonl",),
        expect=("skipped_bad_rows 1", "with_a_bad_row.jsonl:6: field 'output' is missing")),
    "shardtune train data.path=null 'data.mix=[{path: a.jsonl, weight: 2.0}, {path: b.parquet, format: chat, "
    "weight: 0.5}]'": Run(as_="data preview", expect=("a/rows_read 12", "b/rows_read 12", "train_rows 25")),
    "shardtune train ... data.packing=true": Run(as_="data preview", dots=("data.path=train.jsonl", "train.seq_len=256"),
                                                 expect=("‖ separates packed examples",), check=assert_packed),
    "shardtune data prepare ...": Run(check=assert_prepared),
    "shardtune data preview --examples 3 --split train ...": Run(
        dots=("data.path=train.jsonl",), expect=("train split: 32 rows; first 3 below", "--- example 2 (")),
}


def test_every_readme_command_is_in_the_table():
    commands = readme_commands((ROOT / "README.md").read_text())
    missing = [f"README.md:{line}: {command}" for command, line in commands.items() if command not in TABLE]
    stale = [command for command in TABLE if command not in commands]
    assert not missing and not stale, (f"README commands TABLE does not say how to test: {missing}; "
                                       f"TABLE commands the README no longer has: {stale}")
    unexplained = [command for command, entry in TABLE.items()
                   if isinstance(entry, NotRun) and not entry.why or isinstance(entry, Run) and entry.as_ == "plan"
                   and not entry.why]
    assert not unexplained, f"say why these are planned or not run: {unexplained}"


# The files and run the commands name.
def chat(number: int) -> list:
    return [{"role": "user", "content": f"Double {number}."}, {"role": "assistant", "content": str(2 * number)},
            {"role": "user", "content": f"And {number + 1}?"}, {"role": "assistant", "content": str(2 * number + 2)}]


def write_workspace(workspace: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def jsonl(name: str, rows: list) -> None:
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text("".join(json.dumps(row) + "\n" for row in rows))

    def parquet(name: str, numbers: range) -> None:
        pq.write_table(pa.Table.from_pylist([{"messages": chat(number)} for number in numbers]), workspace / name)

    alpaca = [{"instruction": f"Double {number}.", "input": "", "output": str(2 * number)} for number in range(40)]
    jsonl("train.jsonl", alpaca)
    jsonl("a.jsonl", alpaca[:12])
    jsonl("answers.jsonl", [{"instruction": row["instruction"], "answer": row["output"]} for row in alpaca[:12]])
    jsonl("with_a_bad_row.jsonl", [row if number != 5 else {"instruction": "Double 5."}  # line 6: no output
                                   for number, row in enumerate(alpaca[:12])])
    parquet("chats.parquet", range(12))
    parquet("b.parquet", range(12, 24))
    jsonl("sharegpt.jsonl", [{"id": number, "conversations": [{"from": "human", "value": f"Double {number}."},
                                                              {"from": "gpt", "value": str(2 * number)}]}
                             for number in range(12)])
    jsonl("pieces.jsonl", [{"segments": [{"text": f"Q: double {number}\n", "label": False},
                                         {"text": f"A: {2 * number}", "label": True}]} for number in range(12)])
    for part in range(2):  # the directory's own validation split, and a note that is not data
        jsonl(f"corpus/train-{part}.jsonl", [{"text": f"corpus line {part}{number}"} for number in range(10)])
    jsonl("corpus/valid.jsonl", [{"text": f"held out {number}"} for number in range(3)])
    (workspace / "corpus/README.txt").write_text("notes, not rows")
    (workspace / "books").mkdir()
    for number in range(6):  # each longer than train.seq_len=64
        (workspace / f"books/book-{number}.txt").write_text(
            f"Book {number}.\n" + " ".join(f"word{word}" for word in range(40)) + "\n\nThe end.\n")
    # /models/llama-3.2-1b: a pretrained model directory (the shipped tiny base, 869,504 parameters; model=tiny
    # has 1,025,152), so the preview shows which model it loaded.
    shutil.copytree(asset_path("tiny-base"), workspace / "models/llama-3.2-1b")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    workspace = tmp_path_factory.mktemp("readme")
    write_workspace(workspace)
    return workspace


def trained_run_dir(workspace: Path) -> Path:
    """The Optuna sweep's one trial: the README's runs/x."""
    trials = list(workspace.glob("sweeps/*/trial-0/trial.json"))
    assert len(trials) == 1, trials
    return trials[0].parent


def command_line(command: str, run: Run, workspace: Path) -> list:
    """The argument list that tests `command` as `run` says."""
    text = command.replace("[--force]", "--force").replace("<commit>", "0" * 40).replace("step-400", CHECKPOINT)
    text = text.replace("/models/", f"{workspace}/models/").replace("/shared/", f"{workspace}/shared/")
    if "runs/x" in text or "<sweep_dir>" in text:
        run_dir = trained_run_dir(workspace).relative_to(workspace)
        text = re.sub(r"(?<![\w/])runs/x\b", str(run_dir), text).replace("<sweep_dir>", str(run_dir.parent))
    words = shlex.split(text)
    if run.as_ != "written":
        assert words[:2] == ["shardtune", "train"], command
        words[1:2] = run.as_.split()
    dots = run.dots
    if dots == RUN_OVERRIDES:
        dots = tuple(json.loads((trained_run_dir(workspace) / "trial.json").read_text())["overrides"])
    if "..." in words:
        index = words.index("...")
        words[index:index + 1] = dots
    assert words[0] == "shardtune", command
    return words[1:] + list(run.extra)


@pytest.fixture(scope="module")
def shardtune(workspace):
    """Runs command lines in the workspace; the data cache is the workspace's, the hub out of reach (offline)."""
    with ShardtuneServer(env={"SHARDTUNE_DATA_CACHE": str(workspace / "cache"), "HF_HUB_OFFLINE": "1"}) as server:
        outputs = {}  # command line -> output: commands that TABLE tests the same way run once

        def run(command: str) -> str:
            arguments = tuple(command_line(command, TABLE[command], workspace))
            if arguments not in outputs:
                result = server.run(*arguments, cwd=workspace)
                outputs[arguments] = result.stdout + result.stderr
            return outputs[arguments]
        yield run


@pytest.fixture(scope="module")
def trained(workspace, shardtune) -> Path:
    """Runs the README's Optuna sweep (one trial of 2 steps), whose trial the other commands read."""
    shardtune(OPTUNA)
    return trained_run_dir(workspace)


def needs_run(command: str) -> bool:
    return "runs/x" in command.replace("/shared/runs/x", "") or "<sweep_dir>" in command or command == OPTUNA


@pytest.mark.parametrize("command", list(TABLE), ids=[command if len(command) <= 80 else command[:77] + "..."
                                                      for command in TABLE])
def test_readme_command(command, workspace, request):
    entry = TABLE[command]
    if isinstance(entry, NotRun):
        pytest.skip(f"not run: {entry.why}")
    if isinstance(entry, MakeTarget):
        makefile = (ROOT / "Makefile").read_text()
        recipe = re.search(rf"^{entry.target}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
        assert recipe and entry.runs in recipe.group(1), f"Makefile: no target {entry.target} running {entry.runs}"
        return
    if needs_run(command):
        request.getfixturevalue("trained")
    output = request.getfixturevalue("shardtune")(command)
    for expected in entry.expect:
        found = expected.search(output) if isinstance(expected, re.Pattern) else expected in output
        assert found, f"{expected!r} not in the output of {command}:\n{output[-4000:]}"
    if entry.check:
        entry.check(workspace, output)
