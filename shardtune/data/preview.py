"""`shardtune data preview`: a few prepared examples as text, with what carries no loss marked, so users
can check their template and masking before paying for a run."""
from typing import List

from .pipeline import PreparedData, format_report
from .tokenize import IGNORE_INDEX

MASK_OPEN, MASK_CLOSE = "«", "»"
EXAMPLE_BOUNDARY = " ‖ "


def mark_masked(tokenizer, input_ids: List[int], labels: List[int], position_ids: List[int] = None) -> str:
    """The decoded example with masked spans (label -100) inside «», and packed example boundaries as ‖."""
    pieces, span, span_masked = [], [], None

    def flush():
        if span:
            text = tokenizer.decode(span, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            pieces.append(f"{MASK_OPEN}{text}{MASK_CLOSE}" if span_masked else text)

    for index, (token, label) in enumerate(zip(input_ids, labels)):
        masked = label == IGNORE_INDEX
        starts_example = position_ids is not None and index > 0 and position_ids[index] == 0
        if masked != span_masked or starts_example:
            flush()
            span, span_masked = [], masked
            if starts_example:
                pieces.append(EXAMPLE_BOUNDARY)
        span.append(token)
    flush()
    return "".join(pieces)


def format_preview(prepared: PreparedData, tokenizer, split: str, num_examples: int) -> str:
    rows = prepared.split(split)
    lines = ["data: " + format_report(prepared.report),
             f"{split} split: {len(rows)} rows; first {min(num_examples, len(rows))} below. "
             f"Text in {MASK_OPEN}{MASK_CLOSE} is masked (label -100, no loss)"
             + (f"; {EXAMPLE_BOUNDARY.strip()} separates packed examples" if "position_ids" in rows.column_names else "")]
    for index in range(min(num_examples, len(rows))):
        row = rows[index]
        num_trained = sum(label != IGNORE_INDEX for label in row["labels"])
        lines.append(f"--- example {index} ({len(row['input_ids'])} tokens, {num_trained} trained) ---")
        lines.append(mark_masked(tokenizer, row["input_ids"], row["labels"], row.get("position_ids")))
    return "\n".join(lines)
