"""Data: load, check, clean, split, template, tokenize with masking, pack, cache, and batch per rank.

prepare.build          the data config -> tokenized train / validation / test splits and their counts
cache.prepare          the same, cached on disk once per data, tokenizer and settings
cache.prepare_in_workers  the collective version torchrun workers call
batches                padding into tensors and the per-rank order of micro-batches
"""
from .batches import Collator, ShardedBatches
from .cache import prepare, prepare_in_workers
from .errors import DataError
from .prepare import PreparedData, build

__all__ = ["Collator", "ShardedBatches", "DataError", "PreparedData", "build", "prepare", "prepare_in_workers"]
