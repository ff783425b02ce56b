"""Tokenization with loss masking: a format's text segments become `input_ids` and `labels`, where masked
segments get label -100. Over-long rows are truncated (keeping the start) or dropped.
"""
import logging
from typing import Optional

from datasets import Dataset

from ..errors import DataError
from .formats import Format

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (torch's cross-entropy default ignore_index)."""


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts every text with BOS by itself (Llama does, Qwen does not): the data
    pipeline then does the same, so fine-tuning sees what pretraining saw."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def tokenize_split(rows: Dataset, fmt: Format, tokenizer, seq_len: int, mask_prompt: bool, too_long: str,
                   chat_template: Optional[str], with_generation: bool = False, num_proc: int = 1) -> Dataset:
    """Columns: input_ids, labels, truncated (bool); with_generation adds prompt_ids and reference, the
    prompt to generate from and the expected answer (formats that have one; empty otherwise), for
    evaluation splits."""
    columns = ["input_ids", "labels", "truncated"] + (["prompt_ids", "reference"] if with_generation else [])
    if len(rows) == 0:  # map would return an empty split without the new columns
        return Dataset.from_dict({name: [] for name in columns})
    if fmt.appends_eos and tokenizer.eos_token_id is None:
        raise DataError("model.tokenizer has no eos_token; the data pipeline ends every example with it")
    bos = [tokenizer.bos_token_id] if fmt.adds_bos and adds_bos(tokenizer) else []
    eos = [tokenizer.eos_token_id] if fmt.appends_eos else []

    def tokenize_batch(batch):
        batch_rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = {name: [] for name in columns}
        for row in batch_rows:
            segments = fmt.segments(row, chat_template, tokenizer)
            # Segments are tokenized apart so the mask boundary falls exactly between them; the
            # pipeline adds BOS/EOS itself, so the tokenizer must add nothing.
            segment_ids = tokenizer([text for text, _ in segments], add_special_tokens=False)["input_ids"]
            input_ids, labels = list(bos), [IGNORE_INDEX] * len(bos)
            for (_, trained), ids in zip(segments, segment_ids):
                input_ids += ids
                labels += ids if trained or not mask_prompt else [IGNORE_INDEX] * len(ids)
            input_ids, labels = input_ids + eos, labels + eos
            is_too_long = len(input_ids) > seq_len
            if is_too_long and too_long == "drop":
                continue  # a batched map may return fewer rows than it was given
            out["input_ids"].append(input_ids[:seq_len])
            out["labels"].append(labels[:seq_len])
            out["truncated"].append(is_too_long)
            if with_generation:
                pair = fmt.generation_pair(row, chat_template, tokenizer)
                prompt, reference = pair if pair else ("", "")
                out["prompt_ids"].append(bos + tokenizer(prompt, add_special_tokens=False)["input_ids"] if pair else [])
                out["reference"].append(reference)
        return out

    tokenized = rows.map(tokenize_batch, batched=True, remove_columns=rows.column_names, num_proc=num_proc if num_proc > 1 else None,
                         desc="Tokenizing")
    if len(tokenized) == 0:  # every row was too long and dropped
        return Dataset.from_dict({name: [] for name in columns})
    num_without_labels = sum(all(label == IGNORE_INDEX for label in row) for row in tokenized["labels"])
    if num_without_labels:
        logger.warning("%d of %d examples have no trained tokens left after truncation to train.seq_len=%d; "
                       "they add no loss", num_without_labels, len(tokenized), seq_len)
    return tokenized
