"""Cleaning rules applied before the split, each counted so users see what their data lost.

Rows whose instruction or output is empty or whitespace are dropped, and so are exact repeats of an
earlier row (which would otherwise leak between the training and validation splits). Over-long rows
are handled after tokenization (tokenize_rows: truncate or drop).
"""
from typing import Dict, Tuple

from datasets import Dataset

from .instruct import FIELDS


def clean_rows(ds: Dataset, drop_duplicates: bool) -> Tuple[Dataset, Dict[str, int]]:
    """(cleaned rows, counts of rows dropped by each rule). Order-preserving: the first copy is kept."""
    counts = {"rows_read": len(ds)}
    kept = ds.filter(lambda row: bool(row["instruction"].strip()) and bool(row["output"].strip()))
    counts["dropped_empty"] = len(ds) - len(kept)
    if drop_duplicates:
        seen = set()

        def first_copy(row) -> bool:
            key = tuple(row[field] for field in FIELDS)
            is_new = key not in seen
            seen.add(key)
            return is_new

        before = len(kept)
        kept = kept.filter(first_copy)  # one process: the set must see every row in order
        counts["dropped_duplicates"] = before - len(kept)
    return kept, counts
