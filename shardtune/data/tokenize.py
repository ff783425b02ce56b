"""Tokenization with loss masking: a format's segments (text, or the EOS token) become `input_ids` and `labels`,
where masked segments get label -100. Rows longer than seq_len are handled by data.too_long:

truncate       keep the start.
keep_response  keep the response (the last trained segment and what follows it): the masked context before
               it loses its oldest tokens first (a leading BOS stays), then the response loses its end. The
               context keeps at least half the room when it is that long, so a long response cannot push the
               whole prompt out; a short response is kept whole.
drop           leave the row out.
split          (completion text) consecutive chunks of seq_len tokens, each trained: nothing is lost.
"""
import logging
from typing import List, Optional, Tuple

from datasets import Dataset
from jinja2 import TemplateError

from ..errors import DataError
from .segments import EOS, ROW_ID, BadRow, BadRows, Format, SegmentContext, TrainingPolicy, merge_adjacent

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (torch's cross-entropy default ignore_index)."""
TOO_LONG = ("truncate", "keep_response", "drop", "split")
BOOKKEEPING = ("truncated", "chunk", "prompt_tokens")
"""Per-row columns for the pipeline's counts, removed before the splits are used: cut to fit (bool), the
chunk's number within its text (split; 0 otherwise), and the masked tokens before the first trained one."""


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts every text with BOS by itself (Llama does, Qwen does not): the data
    pipeline then does the same, so fine-tuning sees what pretraining saw."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def encode_segments(segments, tokenizer, mask_prompt: bool = True) -> Tuple[List[int], List[int], int]:
    """(input_ids, labels, response_start) of the segments, response_start being where the last trained segment
    begins. Segments are tokenized apart so that the mask boundary falls exactly between them (neighbours
    trained alike together); the pipeline adds BOS/EOS itself, so the tokenizer adds nothing."""
    segments = merge_adjacent(segments)
    texts = [segment.text for segment in segments if segment.text is not EOS]
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    input_ids, labels, response_start = [], [], 0
    for segment in segments:
        ids = [tokenizer.eos_token_id] if segment.text is EOS else next(encoded)
        if segment.trained:
            response_start = len(input_ids)
        input_ids += ids
        labels += ids if segment.trained or not mask_prompt else [IGNORE_INDEX] * len(ids)
    return input_ids, labels, response_start


def keep_response(input_ids: List[int], labels: List[int], response_start: int, num_head: int,
                  seq_len: int) -> Tuple[List[int], List[int]]:
    """Cut an over-long example to seq_len around its response (which starts at response_start): the first
    num_head tokens (BOS) stay, the context between them and the response keeps its newest tokens, the
    response its first ones."""
    context, response, room = response_start - num_head, len(input_ids) - response_start, seq_len - num_head
    context_floor = min(context, room // 2)  # what the response may not take from the context
    response_kept = min(response, room - context_floor)
    context_kept = min(context, room - response_kept)
    kept = slice(response_start - context_kept, response_start + response_kept)
    return input_ids[:num_head] + input_ids[kept], labels[:num_head] + labels[kept]


def tokenize_split(rows: Dataset, fmt: Format, tokenizer, seq_len: Optional[int], mask_prompt: bool, too_long: str,
                   chat_template: Optional[str], with_generation: bool = False, num_proc: int = 1,
                   policy: TrainingPolicy = TrainingPolicy(), bad_rows: Optional[BadRows] = None) -> Dataset:
    """Columns: input_ids, labels and the BOOKKEEPING ones; with_generation adds prompt_ids and reference, the
    prompt to generate from and the expected answer (formats that have one; empty otherwise), for evaluation
    splits. seq_len=None keeps every row whole (for packing that chunks the concatenated texts itself). A row
    the format or chat template refuses goes to `bad_rows` (by default: an error)."""
    columns = ["input_ids", "labels", *BOOKKEEPING] + (["prompt_ids", "reference"] if with_generation else [])
    if len(rows) == 0:  # map would return an empty split without the new columns
        return Dataset.from_dict({name: [] for name in columns})
    if too_long not in TOO_LONG:
        raise ValueError(f"too_long={too_long!r}; expected one of {TOO_LONG}")  # validation names the key
    if fmt.appends_eos and tokenizer.eos_token_id is None:
        raise DataError("model.tokenizer has no eos_token; the data pipeline ends every example with it")
    bos = [tokenizer.bos_token_id] if fmt.adds_bos and adds_bos(tokenizer) else []
    bad_rows = bad_rows or BadRows()

    def fitted(input_ids: List[int], labels: List[int], response_start: int) -> List[Tuple[List[int], List[int]]]:
        """The example as rows of at most seq_len tokens, per too_long."""
        if seq_len is None or len(input_ids) <= seq_len:
            return [(input_ids, labels)]
        if too_long == "drop":
            return []
        if too_long == "split":
            return [(input_ids[i:i + seq_len], labels[i:i + seq_len]) for i in range(0, len(input_ids), seq_len)]
        if too_long == "keep_response":
            # A BOS at the start stays, whether the pipeline or the chat template wrote it.
            num_head = int(tokenizer.bos_token_id is not None and input_ids[:1] == [tokenizer.bos_token_id])
            return [keep_response(input_ids, labels, response_start, num_head, seq_len)]
        return [(input_ids[:seq_len], labels[:seq_len])]

    empty = {"input_ids": [], "labels": [], "truncated": False, "chunk": 0, "prompt_tokens": 0, "prompt_ids": [],
             "reference": ""}

    def tokenize_batch(batch, indices):
        batch_rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = {name: [] for name in columns + ["bad_row", ROW_ID]}
        context = SegmentContext(tokenizer, chat_template, policy)
        for number, row in enumerate(batch_rows):
            row_id = row.get(ROW_ID, indices[number])
            try:
                segments = fmt.segments(row, context)
                pair = fmt.generation_pair(row, context) if with_generation else None
            except (BadRow, TemplateError) as error:  # kept as a row, for bad_rows to judge in row order
                for name in columns:
                    out[name].append(empty[name])
                out["bad_row"].append(str(error))
                out[ROW_ID].append(row_id)
                continue
            input_ids, labels, response_start = encode_segments(segments, tokenizer, mask_prompt)
            input_ids, labels = bos + input_ids, [IGNORE_INDEX] * len(bos) + labels
            prompt_tokens = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
            pieces = fitted(input_ids, labels, response_start + len(bos))  # a batched map may return more or fewer rows
            if with_generation and pieces:
                prompt_ids = bos + encode_segments(pair[0], tokenizer)[0] if pair else []
                reference = pair[1] if pair else ""
            for piece_number, (piece_ids, piece_labels) in enumerate(pieces):
                out["input_ids"].append(piece_ids)
                out["labels"].append(piece_labels)
                out["truncated"].append(len(pieces) == 1 and len(piece_ids) < len(input_ids))
                out["chunk"].append(piece_number)
                out["prompt_tokens"].append(prompt_tokens)
                out["bad_row"].append("")
                out[ROW_ID].append(row_id)
                if with_generation:
                    out["prompt_ids"].append(prompt_ids)
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
    return tokenized


def rows_without_trained_tokens(tokenized: Dataset) -> Tuple[int, int]:
    """(rows whose labels are all masked, the longest prompt among them in tokens: the masked part before the
    first trained token, as it was before any cut)."""
    lost = [prompt for labels, prompt in zip(tokenized["labels"], tokenized["prompt_tokens"])
            if all(label == IGNORE_INDEX for label in labels)]
    return len(lost), max(lost, default=0)
