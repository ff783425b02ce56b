"""From the data config to tokenized train / validation / test splits, with the counts of every rule.

Per source: load -> check and normalise the format -> clean -> split (the dataset's own splits, or
carved deterministically from its rows) -> tokenize with masking, fitting long rows to seq_len by
data.too_long (training rows that all lose every trained token are refused). Then the sources' training rows
are mixed by weight, and packed if asked. Every step depends only on the data, the tokenizer, the settings
and the seed, so every rank (and every later run) computes the same splits in the same order.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from datasets import Dataset, concatenate_datasets
from omegaconf import OmegaConf

from .clean import clean_rows
from ..errors import DataError
from .formats import FORMATS, chat_template_for, normalize
from .packing import concatenate_and_chunk, pack_examples
from .segments import BadRows, SegmentContext, TrainingPolicy
from .sources import SPLITS, RawSplit, load_source
from .synthetic import random_token_rows
from .tokenize import BOOKKEEPING, rows_without_trained_tokens, tokenize_split

logger = logging.getLogger(__name__)
SOURCE_FIELDS = ("path", "format", "columns", "subset", "split", "revision")


@dataclass
class PreparedData:
    train: Dataset  # input_ids, labels (+ position_ids when packed)
    validation: Dataset  # input_ids, labels, prompt_ids, reference (for generation-based evaluation)
    test: Dataset  # the same columns as validation
    report: Dict[str, Any] = field(default_factory=dict)  # counts, and ignored_fields (text)

    def split(self, name: str) -> Dataset:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def set_columns(columns) -> Dict[str, str]:
    """The data.columns keys that are set, {format field: the dataset's name for it}."""
    plain = OmegaConf.to_container(columns) if OmegaConf.is_config(columns) else dict(columns)
    return {key: name for key, name in plain.items() if name is not None}


def sources(data_cfg) -> List[dict]:
    """The sources as plain dicts with every field filled: data.mix, or the one source of data.path."""
    if data_cfg.mix:
        return [{"format": s.format or data_cfg.format,
                 "columns": set_columns(s.columns if s.columns is not None else data_cfg.columns),
                 **{k: s[k] for k in ("path", "subset", "split", "revision", "weight")}} for s in data_cfg.mix]
    return [{**{k: data_cfg[k] for k in SOURCE_FIELDS}, "columns": set_columns(data_cfg.columns), "weight": 1.0}]


def format_report(report: Dict[str, Any]) -> str:
    """The data summary in one line: 'rows_read 6, ..., ignored_fields tools, label' reads as two entries, so
    text entries come last, after a semicolon each."""
    numbers = [f"{key} {value}" for key, value in report.items() if not isinstance(value, str)]
    texts = [f"{key.replace('_', ' ')}: {value}" for key, value in report.items() if isinstance(value, str)]
    return "; ".join([", ".join(numbers)] + texts)


def source_name(source: dict) -> str:
    return Path(source["path"]).stem if source["path"] else "data"


def split_rows(ds: Dataset, val_fraction: float, test_fraction: float, seed: int,
               where: str = "data") -> Tuple[Dataset, Dataset, Dataset]:
    """(train, validation, test): the held-out shares drawn by a seeded permutation, each split in the
    original row order. A positive fraction holds out at least one row."""
    num_rows = len(ds)

    def count(fraction: float) -> int:
        return 0 if fraction == 0 or num_rows < 2 else max(1, round(num_rows * fraction))

    num_val, num_test = count(val_fraction), count(test_fraction)
    if num_val + num_test >= num_rows:
        raise DataError(f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} of {num_rows} "
                        f"rows of {where} leave no training rows; lower them or add data")
    order = np.random.default_rng(seed).permutation(num_rows)
    test, val, train = np.split(order, [num_test, num_test + num_val])
    return tuple(ds.select(sorted(part.tolist())) for part in (train, val, test))


def weighted(rows: Dataset, weight: float, seed: int) -> Dataset:
    """Every row int(weight) times, plus a seeded sample of the fractional part."""
    whole, fraction = int(weight), weight - int(weight)
    indices = list(range(len(rows))) * whole
    extra = np.random.default_rng(seed).choice(len(rows), round(fraction * len(rows)), replace=False)
    return rows.select(indices + sorted(extra.tolist()))


def build(data_cfg, tokenizer, seq_len: int, seed: int) -> PreparedData:
    if data_cfg.format == "random_tokens":
        rows = random_token_rows(data_cfg.num_rows, seq_len, len(tokenizer), seed)
        train, val, test = split_rows(rows, data_cfg.val_fraction, data_cfg.test_fraction, seed)
        return PreparedData(train, val, test, {"train_rows": len(train), "validation_rows": len(val)})
    parts: Dict[str, List[Dataset]] = {name: [] for name in SPLITS}
    report: Dict[str, float] = {}
    all_sources = sources(data_cfg)
    for number, source in enumerate(all_sources):
        prefix = f"{source_name(source)}/" if len(all_sources) > 1 else ""
        format_key = f"data.mix.{number}.format" if data_cfg.mix else "data.format"
        splits, counts = _prepare_source(source, format_key, data_cfg, tokenizer, seq_len, seed + number)
        report.update({prefix + key: value for key, value in counts.items()})
        parts["train"].append(weighted(splits["train"], source["weight"], seed + number))
        parts["validation"].append(splits["validation"])
        parts["test"].append(splits["test"])
    train, val, test = (_concatenate(parts[name]) for name in SPLITS)
    if len(train) == 0:
        raise DataError(f"data.too_long: no training rows fit train.seq_len={seq_len} with data.too_long=drop ({report})")
    report.update({"train_rows": len(train), "validation_rows": len(val), "test_rows": len(test)})
    if data_cfg.packing:
        num_tokens = sum(map(len, train["input_ids"]))
        # too_long=split left the training texts whole: laid end to end, they fill every row.
        train = (concatenate_and_chunk if data_cfg.too_long == "split" else pack_examples)(train, seq_len)
        report.update({"packed_train_rows": len(train),
                       "packing_efficiency": round(num_tokens / (len(train) * seq_len), 4)})
    return PreparedData(train, val, test, report)


class RowLocator:
    """'file:line' of a source's row by its ROW_ID: its splits' rows are numbered one after the other."""

    def __init__(self):
        self.starts: List[Tuple[int, RawSplit]] = []
        self.num_rows = 0

    def add(self, raw: RawSplit) -> int:
        """Number the rows of `raw` on from the earlier splits'; the first one's number."""
        self.starts.append((self.num_rows, raw))
        self.num_rows += len(raw.rows)
        return self.starts[-1][0]

    def __call__(self, row_id: int) -> str:
        start, raw = next((start, raw) for start, raw in reversed(self.starts) if row_id >= start)
        return raw.locate(row_id - start)


def _prepare_source(source: dict, format_key: str, data_cfg, tokenizer, seq_len: int, seed: int):
    fmt = FORMATS[source["format"]]
    raw_splits = load_source(source["path"], source["subset"], source["split"], source["revision"])
    counts: Dict[str, Any] = {}
    own, ignored = {}, {}
    locate = RowLocator()
    bad_rows = BadRows(data_cfg.on_bad_row, locate)
    for name, raw in raw_splits.items():
        if name not in SPLITS:
            continue  # e.g. a hub dataset's "unsupervised" split
        if fmt.name != "completion" and any(f.suffix == ".txt" for f in raw.files):
            raise DataError(f"{format_key}: {source['path']} holds .txt files, which are plain text (one completion "
                            f"row per file), but the format is {fmt.name}; set {format_key}=completion")
        normalized = normalize(fmt, raw, source["columns"], data_cfg.system_prompt, bad_rows, locate.add(raw))
        ignored.update(dict.fromkeys(normalized.ignored_fields))
        rows, split_counts = clean_rows(normalized.rows, fmt, data_cfg.drop_duplicates)
        split_counts["rows_read"] = len(raw.rows)  # skipped bad rows included
        for key, value in split_counts.items():
            counts[key] = counts.get(key, 0) + value
        own[name] = rows
    if data_cfg.on_bad_row == "skip":
        counts["skipped_bad_rows"] = bad_rows.count
    if "train" not in own:
        raise DataError(f"data.split: {source['path']} has splits {sorted(raw_splits)} but no train split; "
                        "name the one to train on with data.split")
    if not data_cfg.use_dataset_splits:
        own = {"train": _concatenate(list(own.values()))}
    if len(own["train"]) == 0:
        raise DataError(f"data.path: no rows of {source['path']} are left after cleaning ({counts})")
    train, val, test = split_rows(own["train"], 0.0 if "validation" in own else data_cfg.val_fraction,
                                  0.0 if "test" in own else data_cfg.test_fraction, seed, source["path"])
    carved = {"train": train, "validation": own.get("validation", val), "test": own.get("test", test)}
    chat_template = chat_template_for(data_cfg, tokenizer) if fmt.name == "chat" else None
    policy = TrainingPolicy.from_config(data_cfg)
    fmt.check_template(carved["train"], SegmentContext(tokenizer, chat_template, policy))
    tokenized = {}
    for name, rows in carved.items():
        num_bad_before = bad_rows.count
        whole = name == "train" and data_cfg.packing and data_cfg.too_long == "split"  # build() chunks them
        result = tokenize_split(rows, fmt, tokenizer, None if whole else seq_len, data_cfg.mask_prompt,
                                data_cfg.too_long, chat_template, with_generation=name != "train",
                                num_proc=data_cfg.num_proc, policy=policy, bad_rows=bad_rows)
        num_fitted = len(rows) - (bad_rows.count - num_bad_before)  # the rows too_long acted on
        counts.update(fit_counts(name, num_fitted, result, seq_len, data_cfg.too_long, whole))
        num_lost = check_trained_tokens(result, name, source["path"], seq_len, data_cfg.too_long)
        if num_lost:
            counts[f"{name}_no_trained_tokens"] = num_lost
        if name == "train" and fmt.name == "completion" and counts["train_truncated"]:
            logger.warning("%d of %d training texts of %s were cut to train.seq_len=%d and lost their ends; "
                           "data.too_long=split trains on all of each text, in chunks of train.seq_len",
                           counts["train_truncated"], len(rows), source["path"], seq_len)
        tokenized[name] = result.remove_columns(list(BOOKKEEPING))
    if data_cfg.on_bad_row == "skip":
        counts["skipped_bad_rows"] = bad_rows.count
        bad_rows.log(source["path"])
        if len(tokenized["train"]) == 0 and bad_rows.count:
            raise DataError(f"data.on_bad_row: every training row of {source['path']} was skipped as malformed; "
                            f"the first: {bad_rows.shown[0]}")
    if ignored:
        counts["ignored_fields"] = ", ".join(ignored)
    return tokenized, counts


def fit_counts(name: str, num_rows: int, result: Dataset, seq_len: int, too_long: str, whole: bool) -> Dict[str, int]:
    """What data.too_long did to a split of num_rows rows: truncated, dropped, or split into chunks."""
    chunks = result["chunk"] if len(result) else []
    counts = {f"{name}_truncated": sum(result["truncated"]) if len(result) else 0,
              f"{name}_dropped_too_long": num_rows - chunks.count(0)}
    if too_long == "split" and whole:  # chunked after mixing, as one stream: packed_train_rows counts the rows
        counts[f"{name}_split_rows"] = sum(len(ids) > seq_len for ids in result["input_ids"])
    elif too_long == "split" and chunks.count(1):
        counts[f"{name}_split_rows"] = chunks.count(1)
        counts[f"{name}_split_chunks"] = sum(1 for number in chunks if number > 0) + chunks.count(1)
    return counts


def check_trained_tokens(result: Dataset, split: str, where: str, seq_len: int, too_long: str) -> int:
    """The rows of a tokenized split left without a trained token, with a warning; DataError when that is every
    training row, for they would train nothing (the loss would be 0/0)."""
    if len(result) == 0:
        return 0
    num_lost, longest_prompt = rows_without_trained_tokens(result)
    if not num_lost:
        return 0
    advice = "a larger train.seq_len" if too_long == "keep_response" else \
        "data.too_long=keep_response (shortens the prompt to keep the response) or a larger train.seq_len"
    if split == "train" and num_lost == len(result):
        raise DataError(f"train.seq_len={seq_len}: all {num_lost} training rows of {where} lose every trained token "
                        f"to truncation; their prompts (the masked text before the first trained token) are up to "
                        f"{longest_prompt} tokens long. Use {advice}")
    logger.warning("%d of %d %s rows of %s have no trained tokens left after truncation to train.seq_len=%d "
                   "(prompts up to %d tokens); they add no loss. Use %s", num_lost, len(result), split, where,
                   seq_len, longest_prompt, advice)
    return num_lost


def _concatenate(parts: List[Dataset]) -> Dataset:
    # An empty split has untyped columns, which would clash with the typed ones of a filled split.
    filled = [part for part in parts if len(part)]
    return concatenate_datasets(filled) if filled else parts[0]
