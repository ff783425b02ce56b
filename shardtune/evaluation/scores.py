"""Scores of one generated answer against its reference, and their means over a set of rows.

Both scores compare text, not token ids, so they mean the same for any tokenizer.
"""
from typing import Dict, List


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the texts are equal once surrounding whitespace is stripped, else 0.0."""
    return float(prediction.strip() == reference.strip())


def longest_common_subsequence(a: List[str], b: List[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, one row kept)."""
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0]
        for j, token_b in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token_a == token_b else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens: the LCS length against both lengths, combined as an F1
    (precision and recall weighted equally, as Hugging Face `evaluate` and rouge-score report it).
    Tokens are compared as they are, without lowercasing or stemming. Two empty texts score 1.0.
    """
    prediction_tokens, reference_tokens = prediction.split(), reference.split()
    if not prediction_tokens or not reference_tokens:
        return float(prediction_tokens == reference_tokens)
    common = longest_common_subsequence(prediction_tokens, reference_tokens)
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction_tokens), common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def mean_scores(predictions: List[str], references: List[str]) -> Dict[str, float]:
    """{"exact_match": mean, "rouge_l": mean} over paired predictions and references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no references to score against")
    count = len(references)
    return {
        "exact_match": sum(map(exact_match, predictions, references)) / count,
        "rouge_l": sum(map(rouge_l, predictions, references)) / count,
    }
