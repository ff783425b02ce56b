"""Keeping the libraries' own progress bars and chatter off the console: every command and worker calls
quiet_libraries() once at start. A leaf module (the libraries are imported when it is called)."""
import logging
import warnings


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
