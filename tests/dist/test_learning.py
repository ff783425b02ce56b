"""Fine-tuning teaches a skill: on words in no training file, exact match of "Reverse the word." goes
from about 0 (the shipped tiny base never saw reversal) to at least 0.8, with full fine-tuning, LoRA
and QLoRA, each in the 100 steps of experiment=reverse_words on 2 gloo workers (docs/learning_demo.md).

20-30 s per method on 2 CPU cores, 75 s for the three (measured in a whole-suite run; 3.3 min while two
other jobs shared the cores): about half is optimizer steps, the rest start-up, evaluation and export."""
import pytest
import torch

from conftest import run_shardtune
from shardtune.config import asset_path
from shardtune.data.instruct import load_rows
from shardtune.evaluation.instructions import evaluate_rows, format_examples
from shardtune.evaluation.load import load_run_base, load_run_final

# Full fine-tuning updates every weight; a third of LoRA's learning rate suits it better.
METHODS = {
    "full": ["method=full", "strategy=ddp", "optim.lr=1e-3"],
    "lora": ["method=lora", "strategy=ddp"],
    "qlora": ["method=qlora", "strategy=ddp"],
}
MAX_NEW_TOKENS = 10  # answers have at most 6 letters; one that runs on without EOS is cut and scores 0
EXACT_MATCH_BEFORE_MAX = 0.05
EXACT_MATCH_AFTER_MIN = 0.8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Generating with a 1M-parameter model is small matrix work: one thread is as fast as two on an idle
    machine, and on a busy one two OpenMP threads wait on each other (measured: 1 s against 5-40 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def test_rows():
    return list(load_rows(asset_path("data/reverse_words_test.jsonl")))


@pytest.mark.parametrize("method", METHODS)
def test_fine_tuning_teaches_reversal(method, test_rows, tmp_path):
    run_shardtune("train", "experiment=reverse_words", *METHODS[method], f"output_dir={tmp_path}", "train.log_interval=50")
    before = evaluate_rows(*load_run_base(tmp_path), test_rows, MAX_NEW_TOKENS)
    after = evaluate_rows(*load_run_final(tmp_path), test_rows, MAX_NEW_TOKENS)
    assert before["exact_match"] <= EXACT_MATCH_BEFORE_MAX, format_examples(test_rows, before["predictions"])
    assert after["exact_match"] >= EXACT_MATCH_AFTER_MIN, format_examples(test_rows, after["predictions"], only_wrong=True)
