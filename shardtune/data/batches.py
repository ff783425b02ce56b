"""From tokenized rows to the micro-batches each rank trains on: padding into tensors (`Collator`) and the
per-rank, per-epoch, resumable order of micro-batches (`ShardedBatches`)."""
import math
from typing import Dict, List

import torch
from datasets import Dataset
from torch.utils.data import DistributedSampler

from .tokenize import IGNORE_INDEX


class Collator:
    """Right-pads rows of `input_ids`/`labels` into tensors. The padded length is rounded up to a
    multiple of `pad_to_multiple_of`, which keeps tensor-core shapes and limits recompilation.

    Unpacked rows get an attention mask. Packed rows (with `position_ids`) get none: transformers then
    reads example boundaries from the position restarts; the padding is one more such "example" with no
    labels. `num_tokens` counts the real (unpadded) tokens, for throughput; it is not a model input.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: List[Dict[str, List[int]]]) -> Dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        padded_length = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in rows[0]
        input_ids = torch.full((len(rows), padded_length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), padded_length), IGNORE_INDEX, dtype=torch.long)
        mask_or_positions = torch.zeros((len(rows), padded_length), dtype=torch.long)
        for i, row in enumerate(rows):
            length = len(row["input_ids"])
            input_ids[i, :length] = torch.as_tensor(row["input_ids"])
            labels[i, :length] = torch.as_tensor(row["labels"])
            if packed:
                mask_or_positions[i, :length] = torch.as_tensor(row["position_ids"])
                mask_or_positions[i, length:] = torch.arange(padded_length - length)
            else:
                mask_or_positions[i, :length] = 1
        num_tokens = torch.tensor(sum(len(row["input_ids"]) for row in rows))
        return {"input_ids": input_ids, "labels": labels,
                "position_ids" if packed else "attention_mask": mask_or_positions, "num_tokens": num_tokens}


class ShardedBatches:
    """The micro-batches one rank trains on, epoch by epoch.

    Each epoch every rank draws the same permutation, seeded by (seed, epoch), drops the tail so that
    all ranks get the same number of full micro-batches (a rank that ran out early would hang the
    others in a collective), and takes every world_size-th example from position `rank` on: torch's
    DistributedSampler with drop_last. With world_size=1 this is the plain shuffled order, and the
    ranks of a larger world together see a prefix of that same order.
    """

    def __init__(self, dataset: Dataset, micro_batch_size: int, rank: int, world_size: int, seed: int,
                 collator: Collator, shuffle: bool = True, split: str = "training"):
        if len(dataset) < micro_batch_size * world_size:
            raise ValueError(
                f"train.micro_batch_size={micro_batch_size} on {world_size} rank(s) needs at least "
                f"{micro_batch_size * world_size} rows, but the {split} split has {len(dataset)}"
            )
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.collator = collator
        self.sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Full micro-batches per epoch on this rank (the same on every rank)."""
        return len(self.sampler) // self.micro_batch_size

    def __iter__(self):
        return self.iterate(self.epoch)

    def iterate(self, epoch: int, start_batch: int = 0):
        """Yield the collated micro-batches of `epoch` from number `start_batch` on: a resumed run
        that had consumed k micro-batches passes k and sees exactly what it would have seen next.
        """
        assert 0 <= start_batch <= len(self), f"start_batch {start_batch} outside 0..{len(self)}"
        self.sampler.set_epoch(epoch)
        indices = list(self.sampler)
        for batch_number in range(start_batch, len(self)):
            start = batch_number * self.micro_batch_size
            columns = self.dataset[indices[start:start + self.micro_batch_size]]
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
            yield self.collator(rows)
