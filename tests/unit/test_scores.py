"""Exact match and ROUGE-L on cases worked out by hand (shardtune/evaluation/scores.py)."""
import pytest

from shardtune.evaluation.scores import exact_match, longest_common_subsequence, mean_scores, rouge_l


@pytest.mark.parametrize("prediction, reference, expected", [
    ("olleh", "olleh", 1.0),
    ("  olleh\n", "olleh", 1.0),       # surrounding whitespace does not count
    ("olleh", "\tolleh ", 1.0),
    ("olle h", "olleh", 0.0),          # inner whitespace does
    ("Olleh", "olleh", 0.0),           # and so does case
    ("olleh.", "olleh", 0.0),
    ("", "", 1.0),
    ("", "x", 0.0),
])
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


@pytest.mark.parametrize("a, b, expected", [
    ("a b c d", "a c d", 3),
    ("a b c d", "d c b a", 1),
    ("the cat sat on the mat", "the cat is on the mat", 5),
    ("x y", "z", 0),
    ("", "a", 0),
])
def test_longest_common_subsequence(a, b, expected):
    assert longest_common_subsequence(a.split(), b.split()) == expected


@pytest.mark.parametrize("prediction, reference, expected", [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides: P = R = F1 = 5/6.
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),
    # LCS 2 ("a c"): P = 2/2, R = 2/4, F1 = 2 * 1 * 0.5 / 1.5 = 2/3.
    ("a c", "a b c d", 2 / 3),
    # Order matters: reversed tokens share a subsequence of one. P = R = 1/3.
    ("c b a", "a b c", 1 / 3),
    ("  the  cat ", "the cat", 1.0),   # tokens are whitespace-separated, however much whitespace
    ("dog", "cat", 0.0),
    ("", "cat", 0.0),
    ("cat", "", 0.0),
    ("", "  ", 1.0),
])
def test_rouge_l(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_mean_scores_average_over_rows():
    scores = mean_scores(["a b", "x", "c"], ["a b", "y", "a b c d"])
    # exact: 1, 0, 0. ROUGE-L: 1, 0, and LCS 1 with P = 1, R = 1/4 -> F1 = 0.4.
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["rouge_l"] == pytest.approx((1 + 0 + 0.4) / 3)


def test_mean_scores_refuses_mismatched_lists():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        mean_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no references"):
        mean_scores([], [])
