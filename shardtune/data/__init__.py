"""Data: from the data config to tokenized train and validation splits (rows of input_ids, labels)."""
from .instruct import load_rows, split_rows, tokenize_rows
from .synthetic import random_token_rows


def tokenized_splits(data_cfg, tokenizer, seq_len: int, seed: int):
    """(train, validation) datasets with input_ids and labels, the same on every rank."""
    if data_cfg.format == "random_tokens":
        rows = random_token_rows(data_cfg.num_rows, seq_len, len(tokenizer), seed)
        return split_rows(rows, data_cfg.val_fraction, seed)
    train, val = split_rows(load_rows(data_cfg.path), data_cfg.val_fraction, seed)
    return tuple(tokenize_rows(rows, tokenizer, seq_len, data_cfg.mask_prompt) for rows in (train, val))
