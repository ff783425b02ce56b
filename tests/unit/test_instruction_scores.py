"""Scoring instruction rows by generation (shardtune/evaluation/instructions.py)."""
import pytest

from shardtune.evaluation import instructions
from shardtune.evaluation.instructions import evaluate_rows, format_examples, prompts_and_references

ROWS = [{"instruction": "Reverse the word.", "input": "abc", "output": "cba"},
        {"instruction": "Double 4.", "input": "", "output": "8"}]


def test_prompts_use_the_training_template():
    prompts, references = prompts_and_references(ROWS)
    assert prompts == ["Instruction: Reverse the word.\nInput: abc\nResponse:\n", "Instruction: Double 4.\nResponse:\n"]
    assert references == ["cba", "8"]


def test_evaluate_rows_scores_the_generated_answers(monkeypatch):
    seen = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size):
        seen.update(prompts=prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        return [" cba\n", "9"]

    monkeypatch.setattr(instructions, "greedy_generate", fake_generate)
    result = evaluate_rows("model", "tokenizer", ROWS, max_new_tokens=7, batch_size=3)
    assert seen == {"prompts": prompts_and_references(ROWS)[0], "max_new_tokens": 7, "batch_size": 3}
    assert result == {"exact_match": 0.5, "rouge_l": 0.5, "num_rows": 2, "predictions": [" cba\n", "9"]}


@pytest.mark.parametrize("only_wrong, expected", [
    (False, "'abc' -> ' cba\\n' (expected 'cba'); '' -> '9' (expected '8')"),
    (True, "'' -> '9' (expected '8')"),
])
def test_format_examples(only_wrong, expected):
    assert format_examples(ROWS, [" cba\n", "9"], only_wrong=only_wrong) == expected
