"""Data: load, check, clean, split, template, tokenize with masking, pack, cache, and batch per rank.

pipeline.build                  the data config -> tokenized train / validation / test splits and their counts
cache.load_or_build             the same, cached on disk once per data, tokenizer and settings
cache.load_or_build_in_workers  the collective version torchrun workers call
batches                         padding into tensors and the per-rank order of micro-batches
"""
from .batches import Collator, ShardedBatches
from .cache import load_or_build, load_or_build_in_workers
from .pipeline import PreparedData, build

__all__ = ["Collator", "ShardedBatches", "PreparedData", "build", "load_or_build", "load_or_build_in_workers"]
