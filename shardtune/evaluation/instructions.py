"""Generation-based scores of a model on instruction rows: each row's prompt (the training template)
is completed greedily and the completion compared with the row's output."""
from typing import Dict, List

from ..data.instruct import format_prompt, load_rows
from .generate import greedy_generate
from .scores import mean_scores


def prompts_and_references(rows) -> tuple:
    """(prompts, references) of alpaca rows {"instruction", "input", "output"}."""
    prompts = [format_prompt(row["instruction"], row["input"]) for row in rows]
    return prompts, [row["output"] for row in rows]


def evaluate_rows(model, tokenizer, rows, max_new_tokens: int, batch_size: int = 64) -> Dict:
    """{"exact_match", "rouge_l": means over the rows, "num_rows", "predictions": the completions}."""
    prompts, references = prompts_and_references(rows)
    predictions = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    return {**mean_scores(predictions, references), "num_rows": len(rows), "predictions": predictions}


def evaluate_file(model, tokenizer, path, max_new_tokens: int, batch_size: int = 64) -> Dict:
    """evaluate_rows over an instruction JSONL file (read and checked as the training data is)."""
    return evaluate_rows(model, tokenizer, list(load_rows(path)), max_new_tokens, batch_size)


def format_examples(rows, predictions: List[str], count: int = 3, only_wrong: bool = False) -> str:
    """A few "input -> prediction (expected output)" pairs, for logs and failure messages."""
    pairs = [(row, prediction) for row, prediction in zip(rows, predictions)
             if not (only_wrong and prediction.strip() == row["output"].strip())]
    return "; ".join(f"{row['input']!r} -> {prediction!r} (expected {row['output']!r})" for row, prediction in pairs[:count])
