"""Entry point of each torchrun worker: `python -m shardtune.trainer.worker <run_dir>/config.yaml`.

Workers read the resolved config the launcher wrote; they never run Hydra themselves.
"""
import logging
import sys

from ..config import load_resolved
from ..quiet import quiet_libraries
from .trainer import Trainer


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m shardtune.trainer.worker <run_dir>/config.yaml")
    run(argv[0])


def run(config_path: str) -> None:
    """One worker, in a process of its own (main) or in a fork of the launcher (launcher/torchrun.py)."""
    # force: a fork of the launcher still has the launcher's handlers (its log file); a worker logs as its own.
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S",
                        force=True)
    quiet_libraries()
    Trainer(load_resolved(config_path)).run()


if __name__ == "__main__":
    main()
