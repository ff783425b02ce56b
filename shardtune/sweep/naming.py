"""Names that make a sweep findable again: the same command line maps to the same sweep directory."""
import hashlib
from typing import List

from hydra.core.override_parser.overrides_parser import OverridesParser

SWEEPS_DIR = "sweeps"


def identity(overrides: List[str]) -> List[str]:
    """The overrides that make a trial what it is: Hydra's own settings (hydra.sweeper.n_trials, ...) and the
    sweep's (sweep.parallel_trials, sweep.retry_failed, ...) change how the sweep runs, not its trials."""
    return [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/", "sweep."))]


def default_sweep_dir(argv: List[str]) -> str:
    """sweeps/<swept keys>-<hash of the overrides>, e.g. sweeps/lr-rank-3f2a9c1d (in any order of the arguments)."""
    overrides = identity([arg for arg in argv if not arg.startswith("-") and "=" in arg])
    swept = sorted(override.get_key_element().split(".")[-1].split("/")[-1]
                   for override in OverridesParser.create().parse_overrides(overrides) if override.is_sweep_override())
    digest = hashlib.sha256("\n".join(sorted(overrides)).encode()).hexdigest()[:8]
    return f"{SWEEPS_DIR}/{'-'.join(swept) or 'sweep'}-{digest}"
