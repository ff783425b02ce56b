"""The data formats: how a row is read and checked, which rows count as empty, and how a row becomes segments
that are trained on or masked.

alpaca      {instruction, input, output, system?, history?}: a prompt template, then the output and EOS; earlier
            turns in `history` ([instruction, response] pairs) come first, each response ended by EOS.
chat        {messages: [{role, content}, ...], system?, tools?}: rendered with the chat template (chat.py).
completion  {text}: plain text, all of it trained, then EOS.
segments    {segments: [{text, label}, ...]}: no template; each piece trained where its label is true, nothing
            added but the BOS the tokenizer itself would add.

data.columns maps a dataset's own field names onto these. `normalize` reads a split, reports the fields the format
does not read, and hands malformed rows to BadRows (an error naming file and line, or skipped and counted).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

from datasets import Dataset, Features, List as ListOf, Value

from ..errors import DataError
from .chat import BUILTIN_CHAT_TEMPLATE, Chat
from .segments import EOS, ROW_ID, BadRow, BadRows, Format, Segment, as_flag
from .sources import RawSplit

__all__ = ["BUILTIN_CHAT_TEMPLATE", "FORMATS", "Normalized", "chat_template_for", "format_prompt", "normalize"]

# Alpaca's two templates, shortened: with byte-level tokens every character of the template is a token
# of every example.
PROMPT_TEMPLATE = "Instruction: {instruction}\nInput: {input}\nResponse:\n"
PROMPT_TEMPLATE_NO_INPUT = "Instruction: {instruction}\nResponse:\n"
SYSTEM_TEMPLATE = "System: {system}\n"


def format_prompt(instruction: str, input_text: str) -> str:
    template = PROMPT_TEMPLATE if input_text else PROMPT_TEMPLATE_NO_INPUT
    return template.format(instruction=instruction, input=input_text)


def string_field(row: dict, names: Dict[str, str], key: str, required: bool = True) -> str:
    value = row.get(names[key])
    if value is None:
        if required:
            raise BadRow(key, "is missing")
        return ""
    if not isinstance(value, str):
        raise BadRow(key, f"must be a string, got {type(value).__name__}")
    return value


class Alpaca(Format):
    name = "alpaca"
    columns = {"instruction": "instruction", "input": "input", "output": "output", "system": "system",
               "history": "history"}
    required = ("instruction", "output")
    features = Features({"instruction": Value("string"), "input": Value("string"), "output": Value("string"),
                         "system": Value("string"), "history": ListOf(ListOf(Value("string")))})

    def read_row(self, row, names, system_prompt):
        history = row.get(names["history"]) or []
        if not isinstance(history, list) or not all(
                isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(text, str) for text in turn)
                for turn in history):
            raise BadRow("history", "must be a list of [instruction, response] pairs of strings")
        return {"instruction": string_field(row, names, "instruction"), "output": string_field(row, names, "output"),
                "input": string_field(row, names, "input", required=False),
                "system": string_field(row, names, "system", required=False) or system_prompt or "",
                "history": [list(turn) for turn in history]}

    def is_empty(self, row):
        return not row["instruction"].strip() or not row["output"].strip()

    def segments(self, row, context):
        # Turns: the system prompt, then (prompt, response) per exchange, the current one last. History is
        # masked by default (data.mask_history), as it was the model's context rather than its answer.
        system = row.get("system")
        exchanges = [(format_prompt(q, ""), a) for q, a in row.get("history") or []]
        exchanges.append((format_prompt(row["instruction"], row["input"]), row["output"]))
        roles = (["system"] if system else []) + ["user", "assistant"] * len(exchanges)
        trained = context.policy.trained_turns(roles, [None] * len(roles), mask_history_default=True)
        ends = context.policy.trained_ends(trained)
        texts = ([SYSTEM_TEMPLATE.format(system=system)] if system else []) + \
            [text for exchange in exchanges for text in exchange]
        segments = []
        for text, role, is_trained, end_trained in zip(texts, roles, trained, ends):
            segments.append(Segment(text, is_trained))
            if role == "assistant":
                segments.append(Segment(EOS, end_trained))
        return segments

    def generation_pair(self, row, context):
        segments = self.segments(row, context)
        return segments[:-2], row["output"]  # everything before the current output and its EOS


class Completion(Format):
    name = "completion"
    columns = {"text": "text"}
    required = ("text",)
    features = Features({"text": Value("string")})

    def read_row(self, row, names, system_prompt):
        return {"text": string_field(row, names, "text")}

    def is_empty(self, row):
        return not row["text"].strip()

    def segments(self, row, context):
        return [Segment(row["text"], True), Segment(EOS, context.policy.trained_ends([True])[0])]


class Segments(Format):
    name = "segments"
    columns = {"segments": "segments", "text": "text", "train": "label"}
    nested = ("text", "train")
    required = ("segments",)
    features = Features({"segments": ListOf({"text": Value("string"), "label": Value("bool")})})
    appends_eos = False

    def read_row(self, row, names, system_prompt):
        pieces = row.get(names["segments"])
        if not isinstance(pieces, list) or not pieces:
            raise BadRow("segments", f"must be a non-empty list of {{{names['text']}, {names['train']}}}")
        out = []
        for number, piece in enumerate(pieces, start=1):
            text = piece.get(names["text"]) if isinstance(piece, dict) else None
            if not isinstance(text, str):
                raise BadRow("segments", f"segment {number} needs a string '{names['text']}'")
            try:
                label = as_flag(piece.get(names["train"]))
            except ValueError as error:
                raise BadRow("segments", f"segment {number}: '{names['train']}' {error}") from None
            if label is None:
                raise BadRow("segments", f"segment {number} needs '{names['train']}': true to train on it, false to "
                                         "mask it")
            out.append({"text": text, "label": label})
        return {"segments": out}

    def ignored_inner_fields(self, row, names):
        known = {names["text"], names["train"]}
        return [f"{names['segments']}.{key}" for piece in row.get(names["segments"]) or [] if isinstance(piece, dict)
                for key, value in piece.items() if key not in known and value is not None]

    def is_empty(self, row):
        return not any(piece["text"].strip() for piece in row["segments"])

    def segments(self, row, context):
        return [Segment(piece["text"], piece["label"]) for piece in row["segments"]]

    def generation_pair(self, row, context):
        segments = self.segments(row, context)
        last = max((i for i, segment in enumerate(segments) if segment.trained), default=0)
        return (segments[:last], segments[last].text) if last else None


FORMATS: Dict[str, Format] = {fmt.name: fmt for fmt in (Alpaca(), Chat(), Completion(), Segments())}


@dataclass
class Normalized:
    rows: Dataset  # the format's fields and ROW_ID
    ignored_fields: List[str]  # the dataset's fields the format does not read, in the rows' order


def normalize(fmt: Format, raw: RawSplit, columns: Dict[str, str], system_prompt: Optional[str],
              bad_rows: BadRows, first_row_id: int = 0) -> Normalized:
    """The rows of `raw` in the format's own fields. A field the format requires that no row has is an error;
    a malformed row goes to `bad_rows` (an error naming its file and line, or skipped)."""
    names = {key: columns.get(key) or default for key, default in fmt.columns.items()}
    present = raw.rows.column_names
    for key in fmt.required:
        if names[key] not in present:
            mapped = f" (data.columns.{key})" if key in columns else ""
            raise DataError(f"{raw.locate(0)}: missing required field '{names[key]}'{mapped}; the rows have {present}")
    read = {names[key] for key in fmt.columns if key not in fmt.nested}
    ignored = {name: None for name in present if name not in read}
    rows = []
    for index, row in enumerate(raw.rows.select_columns([name for name in present if name in read]).to_list()):
        try:
            rows.append({**fmt.read_row(row, names, system_prompt), ROW_ID: first_row_id + index})
        except BadRow as bad:
            mapped = f" (data.columns.{bad.field})" if bad.field in columns else ""
            bad_rows.found(first_row_id + index, f"field '{names[bad.field]}'{mapped} {bad.problem}")
            continue
        ignored.update(dict.fromkeys(fmt.ignored_inner_fields(row, names)))
    features = Features({**fmt.features, ROW_ID: Value("int64")})
    columns_of_rows = {name: [row[name] for row in rows] for name in features}  # from_list([]) loses the columns
    return Normalized(Dataset.from_dict(columns_of_rows, features=features), list(ignored))


def chat_template_for(data_cfg, tokenizer) -> str:
    """The template chat rows are rendered with: data.chat_template, the tokenizer's, or the built-in one."""
    return data_cfg.chat_template or getattr(tokenizer, "chat_template", None) or BUILTIN_CHAT_TEMPLATE
