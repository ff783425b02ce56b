"""Tokenization with loss masking: a format's segments (text, or the EOS token) become `input_ids` and `labels`,
where masked segments get label -100. Over-long rows are truncated (keeping the start) or dropped.
"""
import logging
from typing import Optional

from datasets import Dataset
from jinja2 import TemplateError

from ..errors import DataError
from .segments import EOS, ROW_ID, BadRow, BadRows, Format, SegmentContext, TrainingPolicy, merge_adjacent

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (torch's cross-entropy default ignore_index)."""


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts every text with BOS by itself (Llama does, Qwen does not): the data
    pipeline then does the same, so fine-tuning sees what pretraining saw."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def encode_segments(segments, tokenizer, mask_prompt: bool = True):
    """(input_ids, labels) of the segments. Segments are tokenized apart so that the mask boundary falls exactly
    between them (neighbours trained alike together); the pipeline adds BOS/EOS itself, so the tokenizer adds
    nothing."""
    segments = merge_adjacent(segments)
    texts = [segment.text for segment in segments if segment.text is not EOS]
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    input_ids, labels = [], []
    for segment in segments:
        ids = [tokenizer.eos_token_id] if segment.text is EOS else next(encoded)
        input_ids += ids
        labels += ids if segment.trained or not mask_prompt else [IGNORE_INDEX] * len(ids)
    return input_ids, labels


def tokenize_split(rows: Dataset, fmt: Format, tokenizer, seq_len: int, mask_prompt: bool, too_long: str,
                   chat_template: Optional[str], with_generation: bool = False, num_proc: int = 1,
                   policy: TrainingPolicy = TrainingPolicy(), bad_rows: Optional[BadRows] = None) -> Dataset:
    """Columns: input_ids, labels, truncated (bool); with_generation adds prompt_ids and reference, the
    prompt to generate from and the expected answer (formats that have one; empty otherwise), for
    evaluation splits. A row the format or chat template refuses goes to `bad_rows` (by default: an error)."""
    columns = ["input_ids", "labels", "truncated"] + (["prompt_ids", "reference"] if with_generation else [])
    if len(rows) == 0:  # map would return an empty split without the new columns
        return Dataset.from_dict({name: [] for name in columns})
    if fmt.appends_eos and tokenizer.eos_token_id is None:
        raise DataError("model.tokenizer has no eos_token; the data pipeline ends every example with it")
    bos = [tokenizer.bos_token_id] if fmt.adds_bos and adds_bos(tokenizer) else []
    bad_rows = bad_rows or BadRows()

    def tokenize_batch(batch, indices):
        batch_rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = {name: [] for name in columns + ["bad_row", ROW_ID]}
        context = SegmentContext(tokenizer, chat_template, policy)
        for number, row in enumerate(batch_rows):
            try:
                segments = fmt.segments(row, context)
                pair = fmt.generation_pair(row, context) if with_generation else None
            except (BadRow, TemplateError) as error:  # kept as a row, for bad_rows to judge in row order
                for name, empty in (("input_ids", []), ("labels", []), ("truncated", False), ("prompt_ids", []),
                                    ("reference", "")):
                    if name in out:
                        out[name].append(empty)
                out["bad_row"].append(str(error))
                out[ROW_ID].append(row.get(ROW_ID, indices[number]))
                continue
            input_ids, labels = encode_segments(segments, tokenizer, mask_prompt)
            input_ids, labels = bos + input_ids, [IGNORE_INDEX] * len(bos) + labels
            is_too_long = len(input_ids) > seq_len
            if is_too_long and too_long == "drop":
                continue  # a batched map may return fewer rows than it was given
            out["input_ids"].append(input_ids[:seq_len])
            out["labels"].append(labels[:seq_len])
            out["truncated"].append(is_too_long)
            out["bad_row"].append("")
            out[ROW_ID].append(row.get(ROW_ID, indices[number]))
            if with_generation:
                prompt, reference = pair if pair else ([], "")
                out["prompt_ids"].append(bos + encode_segments(prompt, tokenizer)[0] if pair else [])
                out["reference"].append(reference)
        return out

    tokenized = rows.map(tokenize_batch, batched=True, with_indices=True, remove_columns=rows.column_names,
                         num_proc=num_proc if num_proc > 1 else None, desc="Tokenizing")
    if len(tokenized) == 0:  # every row was too long and dropped
        return Dataset.from_dict({name: [] for name in columns})
    problems = tokenized["bad_row"]
    if any(problems):
        for row_id, problem in zip(tokenized[ROW_ID], problems):
            if problem:
                bad_rows.found(row_id, problem)  # raises under data.on_bad_row=error
        tokenized = tokenized.filter(lambda problem: not problem, input_columns="bad_row")
    tokenized = tokenized.remove_columns(["bad_row", ROW_ID])
    if len(tokenized) == 0:  # every row was too long and dropped, or skipped as malformed
        return Dataset.from_dict({name: [] for name in columns})
    num_without_labels = sum(all(label == IGNORE_INDEX for label in row) for row in tokenized["labels"])
    if num_without_labels:
        logger.warning("%d of %d examples have no trained tokens left after truncation to train.seq_len=%d; "
                       "they add no loss", num_without_labels, len(tokenized), seq_len)
    return tokenized
