"""Strategies: how the model and optimizer are spread over ranks. `make_strategy` builds the one the run's
strategy entry (strategy_registry) names."""
import importlib

from ...strategy_registry import strategy_spec
from .base import Strategy


def make_strategy(cfg, device, dtype) -> Strategy:
    module, name = strategy_spec(cfg.strategy).implementation.split(":")
    return getattr(importlib.import_module(module), name)(cfg, device, dtype)
