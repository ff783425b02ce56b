"""`shardtune eval` on real runs: the loss it measures on the validation split is the one the trainer
logged, checkpoints and the base model are measured too, results reach eval.json and W&B, and bad
input is named."""
import json

import pytest

from conftest import final_val_loss, run_shardtune
from wandb_reader import history_and_summary


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, fast_overrides):
    run_dir = tmp_path_factory.mktemp("eval") / "lora"
    run_shardtune("train", *fast_overrides, "method=lora", "logger=wandb", "train.save_interval=4",
                  "train.keep_checkpoints=0", f"output_dir={run_dir}")
    return run_dir


def test_eval_reproduces_the_trainers_validation_loss_and_compares_the_base(lora_run):
    result = run_shardtune("eval", str(lora_run), "--split", "validation", "--compare-base", "--max-new-tokens", "4")
    results = json.loads((lora_run / "eval.json").read_text())
    # The trainer evaluated the same rows on 2 ranks; a single process must agree.
    assert results["model"]["loss"] == pytest.approx(final_val_loss(lora_run), rel=1e-5)
    assert results["num_examples"] == results["num_generated"] == 200
    assert {"exact_match", "rouge_l", "perplexity"} <= set(results["model"])
    assert results["base"]["loss"] > results["model"]["loss"]  # fine-tuning moved the loss down from the base
    sample = results["samples"][0]
    assert sample["prompt"].startswith("Instruction: ") and {"reference", "prediction", "base_prediction"} <= set(sample)
    assert "fine-tuned" in result.stdout and "base" in result.stdout
    # W&B: the run's own id gets the eval results.
    run_id = (lora_run / "wandb_run_id").read_text().strip()
    summaries = [history_and_summary(d)[1] for d in (lora_run / "wandb").glob(f"offline-run-*-{run_id}")]
    assert any(s.get("eval/model/loss") == pytest.approx(results["model"]["loss"]) for s in summaries)


def test_eval_of_a_checkpoint_writes_its_own_file(lora_run):
    run_shardtune("eval", str(lora_run), "--checkpoint", "step-4", "--split", "validation", "--max-examples", "16",
                  "--max-new-tokens", "2")
    at_step_4 = json.loads((lora_run / "eval-step-4.json").read_text())
    assert at_step_4["checkpoint"] == "step-4" and at_step_4["num_examples"] == 16
    final = json.loads((lora_run / "eval.json").read_text())
    assert at_step_4["model"]["loss"] != pytest.approx(final["model"]["loss"], rel=1e-3)


def test_eval_names_bad_input(tmp_path, lora_run):
    result = run_shardtune("eval", str(tmp_path / "nope"), check=False)
    assert result.returncode != 0 and f"run directory {tmp_path / 'nope'} does not exist" in result.stderr
    result = run_shardtune("eval", str(lora_run), "--checkpoint", "step-99", check=False)
    assert "unknown checkpoint 'step-99'" in result.stderr and "step-4, step-8" in result.stderr
