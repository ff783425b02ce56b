"""Packing: several tokenized examples in one training sequence, without attending across them.

Examples are placed best-fit-decreasing into sequences of at most seq_len tokens. Each packed row keeps
`position_ids` that restart at 0 for every example: transformers reads those restarts as example
boundaries when no attention mask is given (a block-diagonal mask for sdpa/eager, variable-length
kernels for flash attention), so attention and positions are what they would be unpacked. The first
label of each example is masked: unpacked, no token predicts it, and packed, the previous example's
last token must not be trained to predict it either. The loss is then the same as unpacked.

With data.too_long=split the texts are instead laid end to end (each ends in EOS) and cut into rows of
exactly seq_len, as pretraining does: nothing is lost and no row has room to spare. The same position
restarts keep each text's attention within itself; a text that runs past a row's end continues at the start
of the next row.
"""
import bisect
from typing import Dict, List

from datasets import Dataset

from .tokenize import IGNORE_INDEX


def assign_to_bins(lengths: List[int], capacity: int) -> List[List[int]]:
    """Example indices per bin, best-fit decreasing: each example (longest first) goes into the fullest
    bin it still fits in. Deterministic; bins keep their examples in original order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free = []  # sorted (free space, bin number)
    bins: List[List[int]] = []
    for index in order:
        length = lengths[index]
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            space, number = free.pop(slot)
        else:
            space, number = capacity, len(bins)
            bins.append([])
        bins[number].append(index)
        if space - length > 0:
            bisect.insort(free, (space - length, number))
    return [sorted(members) for members in bins]


def pack_examples(ds: Dataset, seq_len: int) -> Dataset:
    """Rows of input_ids, labels and position_ids, each at most seq_len tokens."""
    lengths = [len(ids) for ids in ds["input_ids"]]
    bins = assign_to_bins(lengths, seq_len)
    # One reordering (an arrow `take`) puts each bin's examples next to each other; reading them back in
    # chunks avoids a lookup per example.
    ordered = ds.select([index for members in bins for index in members]).select_columns(["input_ids", "labels"])
    rows = (row for chunk in ordered.iter(batch_size=1024) for row in zip(chunk["input_ids"], chunk["labels"]))
    packed: Dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for members in bins:
        row_ids, row_labels, row_positions = [], [], []
        for ids, labels in (next(rows) for _ in members):
            row_ids += ids
            row_labels += [IGNORE_INDEX] + labels[1:]
            row_positions += range(len(ids))
        packed["input_ids"].append(row_ids)
        packed["labels"].append(row_labels)
        packed["position_ids"].append(row_positions)
    return Dataset.from_dict(packed)


def concatenate_and_chunk(ds: Dataset, seq_len: int) -> Dataset:
    """Rows of input_ids, labels and position_ids: the examples in order, end to end, cut every seq_len tokens
    (the last row may be shorter). Positions restart at each example and at each row; each example's first
    label is masked, as in pack_examples."""
    packed: Dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    row: Dict[str, list] = {name: [] for name in packed}

    def close_row():
        for name in packed:
            packed[name].append(row[name])
            row[name] = []

    for chunk in ds.select_columns(["input_ids", "labels"]).iter(batch_size=1024):
        for ids, labels in zip(chunk["input_ids"], chunk["labels"]):
            labels = [IGNORE_INDEX] + labels[1:]
            start = 0
            while start < len(ids):  # a piece ends where the example or the row ends
                take = min(seq_len - len(row["input_ids"]), len(ids) - start)
                row["input_ids"] += ids[start:start + take]
                row["labels"] += labels[start:start + take]
                row["position_ids"] += range(take)
                start += take
                if len(row["input_ids"]) == seq_len:
                    close_row()
    if row["input_ids"]:
        close_row()
    return Dataset.from_dict(packed)
