"""The learning demo's shipped data and base: reproducible from their scripts, and a fair test (no test
word in any training file, no palindromes, a base that knows its skills but not reversal)."""
import importlib.util
import json
from pathlib import Path

import pytest

from conftest import compose_cfg
from shardtune.config import asset_path

REPO = Path(__file__).resolve().parents[2]
DATA_FILES = ("reverse_words/train.jsonl", "reverse_words/test.jsonl", "string_skills.jsonl")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_rows(name: str) -> list:
    return [json.loads(line) for line in Path(asset_path(f"data/{name}")).read_text().splitlines()]


def test_script_writes_the_shipped_files(tmp_path, monkeypatch):
    make_task_data = load_script("make_task_data")
    monkeypatch.setattr(make_task_data, "DATA_DIR", tmp_path)
    make_task_data.main()
    for name in DATA_FILES:
        assert (tmp_path / name).read_bytes() == Path(asset_path(f"data/{name}")).read_bytes(), name


def test_test_words_are_in_no_training_file():
    test_words = {row["input"] for row in read_rows("reverse_words/test.jsonl")}
    assert len(test_words) == 200
    for name in ("reverse_words/train.jsonl", "string_skills.jsonl"):
        assert not test_words & {row["input"] for row in read_rows(name)}, name


@pytest.mark.parametrize("name", ["reverse_words/train.jsonl", "reverse_words/test.jsonl"])
def test_reversal_rows_are_reversals_of_non_palindromes(name):
    for row in read_rows(name):
        assert row["instruction"] == "Reverse the word." and row["output"] == row["input"][::-1]
        assert row["input"] != row["output"] and 3 <= len(row["input"]) <= 6 and row["input"].islower()


def test_pretraining_skills_never_include_reversal():
    instructions = {row["instruction"] for row in read_rows("string_skills.jsonl")}
    assert len(instructions) == 6 and not any("everse" in instruction for instruction in instructions)


def test_shipped_base_is_the_tiny_architecture_in_bf16():
    from omegaconf import OmegaConf
    from transformers import AutoConfig
    base = Path(asset_path("tiny-base"))
    architecture = OmegaConf.to_container(compose_cfg("model=tiny_base").model.architecture)
    expected = AutoConfig.for_model(**architecture).to_dict()
    shipped = AutoConfig.from_pretrained(base).to_dict()
    assert shipped.pop("dtype") == "bfloat16"
    for key in ("architectures", "_name_or_path", "dtype"):
        expected.pop(key, None), shipped.pop(key, None)
    assert shipped == expected
    assert (base / "model.safetensors").stat().st_size < 2_000_000


def test_base_card_shows_skills_learned_and_reversal_not():
    card = json.loads(Path(asset_path("tiny-base/base_card.json")).read_text())
    scores = card["exact_match_on_held_out_words"]
    assert scores.pop("Reverse the word.") <= 0.05
    assert len(scores) == 6 and min(scores.values()) >= 0.8
