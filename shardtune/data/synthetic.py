"""Random token sequences of exactly seq_len, every token a label: throughput benchmarks and smoke
tests, where what is learned does not matter but the shape of the work does."""
import torch
from datasets import Dataset


def random_token_rows(num_rows: int, seq_len: int, vocab_size: int, seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (num_rows, seq_len), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})
