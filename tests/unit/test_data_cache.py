"""Tokenize once (shardtune/data/cache.py) and the data commands: reuse, invalidation, preview, and bad
data refused before any worker starts."""
import copy
import json

import pytest
from omegaconf import OmegaConf

from conftest import run_shardtune
from shardtune.config import DataConfig
from shardtune.data import load_or_build
from shardtune.data.cache import cache_key
from shardtune.run_dir import COMPLETE_MARKER

ROWS = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(20)]


def write_rows(path, rows=ROWS):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def data_cfg(tmp_path, **fields):
    return OmegaConf.structured(DataConfig(name="t", path=str(tmp_path / "rows.jsonl"),
                                           cache_dir=str(tmp_path / "cache"), **fields))


def test_a_second_prepare_reuses_the_entry(tmp_path, tokenizer):
    write_rows(tmp_path / "rows.jsonl")
    first, path, reused = load_or_build(data_cfg(tmp_path), tokenizer, 64, seed=0)
    assert not reused and (path / COMPLETE_MARKER).exists() and (path / "key.json").exists()
    second, path_again, reused = load_or_build(data_cfg(tmp_path), tokenizer, 64, seed=0)
    assert reused and path_again == path
    assert second.train["input_ids"] == first.train["input_ids"] and second.report == first.report
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging directory left behind


@pytest.mark.parametrize("change", ["file", "seq_len", "seed", "mask_prompt", "packing", "too_long", "tokenizer",
                                    "chat_template"])
def test_any_change_to_data_tokenizer_or_settings_builds_a_new_entry(tmp_path, tokenizer, change):
    write_rows(tmp_path / "rows.jsonl")
    cfg, seq_len, seed, tok = data_cfg(tmp_path), 64, 0, tokenizer
    before = cache_key(cfg, tok, seq_len, seed)[0]
    if change == "file":
        write_rows(tmp_path / "rows.jsonl", ROWS + [{"instruction": "New.", "output": "row"}])
    elif change == "seq_len":
        seq_len = 32
    elif change == "seed":
        seed = 1
    elif change == "tokenizer":
        tok = copy.deepcopy(tokenizer)
        tok.add_tokens(["<extra>"])
    elif change == "too_long":
        cfg.too_long = "keep_response"
    elif change == "chat_template":
        tok = copy.deepcopy(tokenizer)
        tok.chat_template = "{{ messages }}"
    else:
        cfg[change] = not cfg[change]
    assert cache_key(cfg, tok, seq_len, seed)[0] != before
    assert cache_key(data_cfg(tmp_path, num_proc=2), tokenizer, 64, 0)[0] == \
        cache_key(data_cfg(tmp_path), tokenizer, 64, 0)[0]  # how it is computed does not change what


def test_an_incomplete_entry_is_rebuilt(tmp_path, tokenizer):
    write_rows(tmp_path / "rows.jsonl")
    _, path, _ = load_or_build(data_cfg(tmp_path), tokenizer, 64, seed=0)
    (path / COMPLETE_MARKER).unlink()  # say, copied by hand and cut short
    (path / "train" / "state.json").write_text("garbage")
    prepared, path_again, reused = load_or_build(data_cfg(tmp_path), tokenizer, 64, seed=0)
    assert not reused and path_again == path and (path / COMPLETE_MARKER).exists()
    assert len(prepared.train) == 18


def test_data_prepare_then_a_later_command_reuses_the_cache(tmp_path):
    cache = tmp_path / "cache"
    result = run_shardtune("data", "prepare", f"data.cache_dir={cache}", "train.seq_len=64")
    assert "data prepared in" in result.stderr + result.stdout
    # train goes through the same prepare_data before it starts workers (test_bad_data_... shows it stops there).
    result = run_shardtune("data", "preview", "--examples", "1", f"data.cache_dir={cache}", "train.seq_len=64")
    assert "data reused from" in result.stderr + result.stdout
    assert len(list(cache.iterdir())) == 1


def test_data_preview_marks_masked_text_and_shows_counts(tmp_path):
    result = run_shardtune("data", "preview", "--examples", "2", "--split", "test",
                           f"data.cache_dir={tmp_path}", "train.seq_len=64")
    out = result.stdout
    assert "rows_read 2000, dropped_empty 0, dropped_duplicates 0" in out
    assert "test split: 200 rows; first 2 below" in out
    assert out.count("--- example") == 2
    assert "«Instruction: " in out and "Response:\n»" in out and "</s>" in out


def test_preview_of_packed_rows_marks_example_boundaries(tmp_path):
    result = run_shardtune("data", "preview", "--examples", "1", f"data.cache_dir={tmp_path}",
                           "train.seq_len=256", "data.packing=true")
    assert "packing_efficiency" in result.stdout and " ‖ «Instruction" in result.stdout


def test_bad_data_fails_before_any_worker_starts_and_names_the_line(tmp_path, fast_overrides):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + '{"instruction": "x", "output": \n')
    run_dir = tmp_path / "run"
    result = run_shardtune("train", *fast_overrides, f"data.path={bad}", f"data.cache_dir={tmp_path / 'c'}",
                           f"output_dir={run_dir}", check=False)
    assert result.returncode != 0
    assert f"shardtune: data error: {bad}:2: not valid JSON" in result.stderr
    assert not (run_dir / "config.yaml").exists()  # the launcher stopped before writing the run or starting torchrun
    assert "torch.distributed.run" not in result.stderr
