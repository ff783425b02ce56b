"""Generation-based evaluation of instruction data: greedy completions (generate.py) scored against
references with exact match and ROUGE-L (scores.py)."""
from .generate import greedy_generate, greedy_token_ids
from .scores import exact_match, mean_scores, rouge_l

__all__ = ["exact_match", "greedy_generate", "greedy_token_ids", "mean_scores", "rouge_l"]
