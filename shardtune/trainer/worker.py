"""Entry point of each torchrun worker: `python -m shardtune.trainer.worker <run_dir>/config.yaml`.

Workers read the resolved config the launcher wrote; they never run Hydra themselves.
"""
import logging
import sys
import warnings

from ..config import load_resolved
from .trainer import Trainer


def quiet_libraries() -> None:
    """One progress bar per run is enough: keep the libraries' own bars and chatter off the console."""
    import datasets
    import transformers
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    # bitsandbytes' CPU backend announces at every import that an optional kernel package is absent.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # peft asks models a deprecated question; the answer is right and the warning is not the user's.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m shardtune.trainer.worker <run_dir>/config.yaml")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    quiet_libraries()
    Trainer(load_resolved(argv[0])).run()


if __name__ == "__main__":
    main()
