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
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    quiet_libraries()
    Trainer(load_resolved(argv[0])).run()


if __name__ == "__main__":
    main()
