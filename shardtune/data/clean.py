"""Cleaning rules applied before the split, each counted so users see what their data lost.

Empty rows (per format: a blank instruction or output, a conversation whose assistant turns are all
blank, blank text) are dropped, and so are exact repeats of an earlier row, which would otherwise leak
between the training and evaluation splits. Over-long rows are handled at tokenization (data.too_long).
"""
import json
from typing import Dict, Tuple

from datasets import Dataset

from .segments import ROW_ID, Format


def clean_rows(ds: Dataset, fmt: Format, drop_duplicates: bool) -> Tuple[Dataset, Dict[str, int]]:
    """(cleaned rows, counts of rows read and dropped by each rule). Order-preserving: the first copy is kept."""
    counts = {"rows_read": len(ds)}
    kept = ds.filter(lambda row: not fmt.is_empty(row))
    counts["dropped_empty"] = len(ds) - len(kept)
    if drop_duplicates:
        seen = set()

        def first_copy(row) -> bool:
            key = json.dumps({name: value for name, value in row.items() if name != ROW_ID}, sort_keys=True)
            is_new = key not in seen
            seen.add(key)
            return is_new

        before = len(kept)
        kept = kept.filter(first_copy)  # one process: the set must see every row in order
        counts["dropped_duplicates"] = before - len(kept)
    return kept, counts
