"""Data: from the data config to tokenized train and validation splits (rows of input_ids, labels)."""
from .clean import clean_rows
from .instruct import load_rows, split_rows, tokenize_rows
from .synthetic import random_token_rows


def tokenized_splits(data_cfg, tokenizer, seq_len: int, seed: int):
    """(train, validation, report): datasets with input_ids and labels, the same on every rank, and the
    row counts of each cleaning rule and split."""
    if data_cfg.format == "random_tokens":
        rows = random_token_rows(data_cfg.num_rows, seq_len, len(tokenizer), seed)
        train, val = split_rows(rows, data_cfg.val_fraction, seed)
        return train, val, {"train_rows": len(train), "validation_rows": len(val)}
    rows, report = clean_rows(load_rows(data_cfg.path, data_cfg.columns), data_cfg.drop_duplicates)
    if len(rows) == 0:
        raise ValueError(f"data.path: no rows of {data_cfg.path} are left after cleaning ({report})")
    splits = []
    for name, split in zip(("train", "validation"), split_rows(rows, data_cfg.val_fraction, seed)):
        tokenized = tokenize_rows(split, tokenizer, seq_len, data_cfg.mask_prompt, data_cfg.too_long)
        report[f"{name}_dropped_too_long"] = len(split) - len(tokenized)
        report[f"{name}_truncated"] = sum(tokenized["truncated"])
        report[f"{name}_rows"] = len(tokenized)
        splits.append(tokenized.remove_columns("truncated"))
    if report["train_rows"] == 0:
        raise ValueError(f"data.path: no training rows of {data_cfg.path} fit train.seq_len={seq_len} "
                         f"with data.too_long=drop ({report})")
    return (*splits, report)
