"""Instruction data, from a JSONL file to the micro-batches each rank trains on.

Owns: reading and validating alpaca rows {"instruction", "input", "output"} (`load_rows`), the
deterministic train/validation split (`split_rows`), the prompt template with tokenization and
prompt masking (`tokenize_rows`), padding into tensors (`Collator`) and the per-rank, per-epoch,
resumable order of micro-batches (`ShardedBatches`).

Rows stay `datasets.Dataset`s until the collator, so loading, mapping and caching are the library's.
"""
import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import torch
from datasets import Dataset
from torch.utils.data import DistributedSampler

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (torch's cross-entropy default ignore_index)."""

# Alpaca's two templates, shortened: with byte-level tokens every character of the template is a
# token of every example.
PROMPT_TEMPLATE = "Instruction: {instruction}\nInput: {input}\nResponse:\n"
PROMPT_TEMPLATE_NO_INPUT = "Instruction: {instruction}\nResponse:\n"


FIELDS = ("instruction", "input", "output")


def load_rows(path, columns: Mapping[str, str] = None) -> Dataset:
    """Read an instruction JSONL file: one object per line with string `instruction` and `output`, and
    optionally a string `input` (default ""). Blank lines are skipped; other keys are dropped.
    `columns` names the file's own fields for these, e.g. {"instruction": "question", "output": "answer"}.

    Every line is checked first, so a bad file fails here with its name and line number rather than
    deep inside tokenization.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data.path: {path} does not exist or is not a file")
    rows, columns = [], dict(columns or {})
    with path.open("rb") as f:
        for line_number, raw_line in enumerate(f, start=1):
            if raw_line.strip():
                rows.append(_parse_row(raw_line, f"{path}:{line_number}", columns))
    if not rows:
        raise ValueError(f"data.path: {path} is empty (no rows)")
    return Dataset.from_list(rows)


def _parse_row(raw_line: bytes, where: str, columns: Dict[str, str]) -> Dict[str, str]:
    try:
        row = json.loads(raw_line.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{where}: not UTF-8 text ({error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    parsed = {}
    for field in FIELDS:
        source = columns.get(field, field)
        mapped = f" (data.columns.{field})" if field in columns else ""
        if source not in row:
            if field == "input":
                parsed[field] = ""
                continue
            raise ValueError(f"{where}: missing required field '{source}'{mapped}")
        if not isinstance(row[source], str):
            raise ValueError(f"{where}: field '{source}'{mapped} must be a string, got {type(row[source]).__name__}")
        parsed[field] = row[source]
    return parsed


def split_rows(ds: Dataset, val_fraction: float, seed: int) -> Tuple[Dataset, Dataset]:
    """Hold out `val_fraction` of the rows (at least one when the fraction is positive and there are
    two rows or more). Depends only on the data and the seed, so every rank computes the same split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    num_rows = len(ds)
    num_val = 0 if val_fraction == 0 or num_rows < 2 else max(1, round(num_rows * val_fraction))
    if num_val >= num_rows:
        raise ValueError(
            f"data.val_fraction={val_fraction} of {num_rows} rows leaves no training rows; lower it or add data"
        )
    if num_val == 0:
        return ds, ds.select([])
    split = ds.train_test_split(test_size=num_val, shuffle=True, seed=seed)
    return split["train"], split["test"]


def format_prompt(instruction: str, input_text: str) -> str:
    template = PROMPT_TEMPLATE if input_text else PROMPT_TEMPLATE_NO_INPUT
    return template.format(instruction=instruction, input=input_text)


def tokenize_rows(ds: Dataset, tokenizer, seq_len: int, mask_prompt: bool, too_long: str = "truncate") -> Dataset:
    """Turn rows into `input_ids` (prompt, response, EOS) and `labels`, both lists of ints of at most
    `seq_len` tokens. With `mask_prompt`, prompt tokens get label -100 so only the response (and the
    EOS, which teaches the model to stop) carries loss. Rows longer than `seq_len` are truncated
    (too_long="truncate") or left out (too_long="drop"); a boolean column `truncated` marks the former.
    """
    if too_long not in ("truncate", "drop"):
        raise ValueError(f"data.too_long: expected truncate or drop, got {too_long!r}")
    empty = Dataset.from_dict({"input_ids": [], "labels": [], "truncated": []})
    if len(ds) == 0:  # an empty split (val_fraction=0): map would return it without the new columns
        return empty
    eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        raise ValueError("model.tokenizer has no eos_token; the data pipeline ends every example with it")

    def tokenize_batch(batch):
        prompts = [format_prompt(i, x) for i, x in zip(batch["instruction"], batch["input"])]
        # Prompt and response are tokenized apart so the mask boundary falls exactly between them;
        # the data code adds EOS itself, so the tokenizer must add nothing.
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(batch["output"], add_special_tokens=False)["input_ids"]
        input_ids, labels, truncated = [], [], []
        for prompt, response in zip(prompt_ids, response_ids):
            response = response + [eos_token_id]
            too_long_row = len(prompt) + len(response) > seq_len
            if too_long_row and too_long == "drop":
                continue  # a batched map may return fewer rows than it was given
            prompt_labels = [IGNORE_INDEX] * len(prompt) if mask_prompt else prompt
            # Truncation keeps the start: the prompt must survive for the response to mean anything.
            input_ids.append((prompt + response)[:seq_len])
            labels.append((prompt_labels + response)[:seq_len])
            truncated.append(too_long_row)
        return {"input_ids": input_ids, "labels": labels, "truncated": truncated}

    tokenized = ds.map(tokenize_batch, batched=True, remove_columns=ds.column_names, desc="Tokenizing")
    if len(tokenized) == 0:  # every row was too long and dropped
        return empty
    num_without_labels = sum(all(label == IGNORE_INDEX for label in row) for row in tokenized["labels"])
    if num_without_labels:
        logger.warning(
            "%d of %d examples have no response tokens left after truncation to train.seq_len=%d; "
            "they add no loss", num_without_labels, len(tokenized), seq_len,
        )
    return tokenized


class Collator:
    """Right-pads rows of `input_ids`/`labels` into tensors. The padded length is rounded up to a
    multiple of `pad_to_multiple_of`, which keeps tensor-core shapes and limits recompilation.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: List[Dict[str, List[int]]]) -> Dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        padded_length = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), padded_length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), padded_length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), padded_length), dtype=torch.long)
        for i, row in enumerate(rows):
            length = len(row["input_ids"])
            input_ids[i, :length] = torch.as_tensor(row["input_ids"])
            labels[i, :length] = torch.as_tensor(row["labels"])
            attention_mask[i, :length] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


class ShardedBatches:
    """The micro-batches one rank trains on, epoch by epoch.

    Each epoch every rank draws the same permutation, seeded by (seed, epoch), drops the tail so that
    all ranks get the same number of full micro-batches (a rank that ran out early would hang the
    others in a collective), and takes every world_size-th example from position `rank` on: torch's
    DistributedSampler with drop_last. With world_size=1 this is the plain shuffled order, and the
    ranks of a larger world together see a prefix of that same order.
    """

    def __init__(self, dataset: Dataset, micro_batch_size: int, rank: int, world_size: int, seed: int,
                 collator: Collator, shuffle: bool = True):
        if len(dataset) < micro_batch_size * world_size:
            raise ValueError(
                f"train.micro_batch_size={micro_batch_size} on {world_size} rank(s) needs at least "
                f"{micro_batch_size * world_size} rows, but the training split has {len(dataset)}"
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
