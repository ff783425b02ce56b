"""Many `shardtune` command lines, each at the cost of its own work rather than of importing torch again.

Most of a short command's time (plan, data preview: about 1 s of work) goes into importing torch, transformers,
datasets and peft (4-6 s on 2 cores). This server imports them once and runs every command line in a fork of
itself, as the `shardtune` script runs it in a fresh process: `main()` with that argv, in its own process,
working directory, stdout and stderr, ending with the exit status the script would; the torchrun workers a command
starts are fresh processes as always. The server only imports before it forks: no Hydra state, no torch thread
pool (each command starts its own), nothing another command could see.

    with ShardtuneServer(env={"HF_HUB_OFFLINE": "1"}) as server:
        result = server.run("plan", "method=full", cwd=workspace)  # a subprocess.CompletedProcess

tests/conftest.py's run_shardtune runs every command of the suite through one server per pytest worker.

The server reads one JSON request a line on stdin and answers one JSON line on stdout. When the test process ends
first, the command under way gets SIGTERM, as from a scheduler: its run stops its workers.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

PRELOADED = ("torch", "transformers", "datasets", "peft", "hydra", "shardtune.cli", "shardtune.launcher.launch",
             "shardtune.launcher.memory", "shardtune.data.preview", "shardtune.evaluation.command", "shardtune.export")

RUNNING = []  # the process of the command under way


def serve() -> None:
    import importlib
    stop_with_parent()
    channel = os.fdopen(os.dup(1), "w")  # the replies; not inherited by the programs commands start
    os.dup2(2, 1)  # what libraries print (bitsandbytes prints while importing) goes to stderr, not among the replies
    for module in PRELOADED:
        importlib.import_module(module)
    import torch
    # On a GPU machine some imports start CUDA (torchao, which peft and transformers' quantizers import where it is
    # installed, asks for the GPU's properties), and a process forked after that cannot use CUDA: the commands then
    # run as fresh processes, at the cost of their imports.
    forks = not torch.cuda.is_initialized()
    for line in sys.stdin:
        request = json.loads(line)
        channel.flush()
        reply = run_in_fork(request) if forks else run_in_fresh_process(request)
        try:
            channel.write(json.dumps(reply) + "\n")
            channel.flush()
        except BrokenPipeError:  # the test process is gone
            return


def run_in_fork(request: dict) -> dict:
    """The command in a fork of this server, which has done the imports."""
    with tempfile.TemporaryDirectory() as outputs:
        paths = [Path(outputs) / "stdout", Path(outputs) / "stderr"]
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the command's own, as in a fresh process
            run_command(request, paths)  # does not return
        RUNNING[:] = [pid]
        _, status = os.waitpid(pid, 0)
        RUNNING.clear()
        return {"returncode": os.waitstatus_to_exitcode(status),
                **{path.name: path.read_text(errors="replace") if path.exists() else "" for path in paths}}


def stop_with_parent() -> None:
    """When pytest ends before a command does (a `timeout` around it stops pytest alone), SIGTERM the command, which
    stops its workers as a scheduler's SIGTERM would: otherwise the run keeps going, holding its GPU."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the parent ends
    except (AttributeError, OSError):  # not Linux
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: pass_on(signum))


def pass_on(signum: int) -> None:
    for pid in RUNNING:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def run_in_fresh_process(request: dict) -> dict:
    """The command as the `shardtune` console script runs it, in a new interpreter."""
    command = subprocess.Popen([sys.executable, "-m", "shardtune.cli", *request["args"]], cwd=request["cwd"],
                               env={**os.environ, **(request.get("env") or {})}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    RUNNING[:] = [command.pid]
    try:
        stdout, stderr = command.communicate(timeout=request["timeout"])
        returncode = command.returncode
    except subprocess.TimeoutExpired:  # as SIGALRM ends a forked command
        command.terminate()  # SIGTERM: the launcher stops its workers first (a kill would leave them running)
        try:
            stdout, stderr = command.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            command.kill()
            stdout, stderr = command.communicate()
        returncode = -signal.SIGALRM
    finally:
        RUNNING.clear()
    return {"returncode": returncode, "stdout": stdout, "stderr": stderr}


def run_command(request: dict, paths: list) -> None:
    """In the forked child: the command as the `shardtune` console script runs it, ending with the status the
    interpreter would give (SystemExit's code; 1 and the traceback for an exception), without unwinding into the
    server's loop."""
    status = 1
    try:
        os.chdir(request["cwd"])
        os.environ.update(request.get("env") or {})  # for this command and the processes it starts
        if "OMP_NUM_THREADS" in (request.get("env") or {}):  # torch read the variable when the server imported it
            import torch
            torch.set_num_threads(int(request["env"]["OMP_NUM_THREADS"]))
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # stdin is the server's request channel
        for fd, path in zip((1, 2), paths):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        signal.alarm(request["timeout"])  # SIGALRM ends a command that hangs
        sys.argv = ["shardtune", *request["args"]]
        from shardtune.cli import main
        main()
        status = 0
    except SystemExit as exit:  # sys.exit(None | int | "message"), as the interpreter reads it
        status = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
        if not isinstance(exit.code, (int, type(None))):
            print(exit.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        try:  # not the server's atexit handlers: they would clean up after the server (its temporary directory)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


class ShardtuneServer:
    """The test side: start the server (with `env` over the test's environment, W&B offline), run commands."""

    def __init__(self, env: dict = None):
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)
        self.lock = threading.Lock()  # one command at a time: a request and its reply share the pipes

    def run(self, *args: str, cwd, check: bool = True, timeout: int = 600, env: dict = None) -> subprocess.CompletedProcess:
        """`shardtune *args` in `cwd`, with `env` over the server's environment."""
        request = {"args": args, "cwd": str(cwd), "timeout": timeout, "env": env or {}}
        with self.lock:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            reply = self.process.stdout.readline()
        assert reply, f"the shardtune server died (exit code {self.process.poll()})"
        reply = json.loads(reply)
        result = subprocess.CompletedProcess(["shardtune", *args], reply["returncode"], reply["stdout"], reply["stderr"])
        if check and result.returncode != 0:
            raise AssertionError(f"shardtune {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-6000:]}")
        return result

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    serve()
