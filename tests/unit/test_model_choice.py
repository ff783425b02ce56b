"""Choosing the model to fine-tune: `model.name_or_path=X` alone picks model=pretrained (shardtune/cli.py
with_model_group), the launcher's checks of the model and its tokenizer before any worker starts
(shardtune/launcher/model_check.py), the rule against a path that the model group would ignore, and `plan` sizing a
pretrained model from its own config.json.

Models are tiny random Llamas saved with save_pretrained into tmp_path, with the shipped byte-level tokenizer plus
one added special token (260 tokens), so a run that used the tiny tokenizer (259) instead would show.
"""
import logging
import os

import pytest
import torch
from conftest import compose_cfg, run_shardtune
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, T5Config

from shardtune.cli import with_model_group
from shardtune.config import asset_path, model_name
from shardtune.errors import ConfigError
from shardtune.launcher.memory import estimate_memory, model_config
from shardtune.launcher.model_check import check_model
from shardtune.launcher.validation import validate


def save_model(path, vocab_size: int = 272, with_tokenizer: bool = True):
    """A random Llama (2 layers, hidden 64) with `vocab_size` embedding rows and, if asked, its 260-token tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tiny-tokenizer"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|sep|>"]})
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=min(tokenizer.bos_token_id, vocab_size - 1),
                         eos_token_id=min(tokenizer.eos_token_id, vocab_size - 1))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    if with_tokenizer:
        tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "my-llama"
    save_model(path)
    return path


def pretrained(model_dir, *overrides, values=None):
    """The config `shardtune train model.name_or_path=<model_dir> ...` composes."""
    return compose_cfg(*with_model_group([f"model.name_or_path={model_dir}", *overrides]), values=values)


def refused(cfg) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_model(cfg)
    return info.value


# --------------------------------------------------------------------------- model=pretrained from the command line


@pytest.mark.parametrize("argv, expected", [
    (["model.name_or_path=/m"], ["model=pretrained", "model.name_or_path=/m"]),
    (["experiment=demo", "model.name_or_path=/m", "--cfg", "job"],
     ["model=pretrained", "experiment=demo", "model.name_or_path=/m", "--cfg", "job"]),
    (["-m", "model.name_or_path=/a,/b", "optim.lr=1e-3,2e-3"],
     ["-m", "model=pretrained", "model.name_or_path=/a,/b", "optim.lr=1e-3,2e-3"]),
    (["--cfg", "job", "model.name_or_path=/m"], ["--cfg", "job", "model=pretrained", "model.name_or_path=/m"]),
    (["++model.name_or_path=org/model"], ["model=pretrained", "++model.name_or_path=org/model"]),
    (["model=tiny_base", "model.name_or_path=/m"], None),  # a group chosen: kept
    (["model=llama3.1-8b", "model.init=random"], None),  # the benchmarks' random weights
    (["model.name_or_path=null"], None),
    (["~model.name_or_path"], None),
    (["model.name=x", "method=full"], None),
    ([], None),
    (["model.name_or_path=[unclosed"], None),  # left for Hydra to report
], ids=["path", "experiment", "sweep", "cfg-first", "force-add", "group", "random", "null", "delete", "no-path", "empty", "bad"])
def test_a_model_path_without_a_group_picks_model_pretrained(argv, expected):
    assert with_model_group(argv) == (expected if expected is not None else argv)


def test_model_name_is_the_last_part_of_the_path():
    assert model_name("/models/llama-3.2-1b/") == "llama-3.2-1b"
    assert model_name("Qwen/Qwen2.5-0.5B") == "Qwen2.5-0.5B"
    assert model_name(None) == "pretrained"
    assert model_name(".") == os.path.basename(os.getcwd())


def test_the_pretrained_group_follows_the_path_and_keeps_a_given_name(model_dir):
    model = pretrained(model_dir).model
    assert (model.name, model.init, model.tokenizer, dict(model.architecture)) == ("my-llama", "pretrained", None, {})
    assert pretrained(model_dir, "model.name=mine").model.name == "mine"


@pytest.mark.parametrize("experiment, method", [("demo", "full"), ("reverse_words", "lora")])
def test_a_model_path_replaces_the_experiments_model_and_keeps_the_rest(model_dir, experiment, method):
    # Hydra lets a model= choice on the command line win over the experiment's `override /model`.
    cfg = pretrained(model_dir, f"experiment={experiment}")
    assert (cfg.model.name, cfg.model.init, cfg.model.name_or_path) == ("my-llama", "pretrained", str(model_dir))
    assert cfg.method.name == method and cfg.optim.lr == 3e-3
    validate(cfg, "cpu", 2)


def test_a_group_that_would_ignore_the_path_is_refused(model_dir):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg("model=tiny", f"model.name_or_path={model_dir}"), "cpu", 2)
    assert info.value.key == "model.name_or_path" and "model=pretrained" in str(info.value)
    validate(compose_cfg("model=llama3.1-8b", "model.init=random"), "cpu", 2)  # the path is its tokenizer's source


def test_model_pretrained_needs_a_path():
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg("model=pretrained"), "cpu", 2)
    assert info.value.key == "model.name_or_path"


def test_the_command_line_refuses_a_path_that_does_not_exist(tmp_path):
    # model=pretrained, picked by `shardtune train` itself: before, model=tiny trained and the path went unread.
    result = run_shardtune("train", "model.name_or_path=/nonexistent/model", f"output_dir={tmp_path / 'run'}",
                           check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == ("shardtune: config error: model.name_or_path: /nonexistent/model "
                                                      "is not a model directory (no config.json)")


# --------------------------------------------------------------------------- the launcher's checks


def test_the_models_own_tokenizer_is_checked_and_logged(model_dir, caplog):
    caplog.set_level(logging.INFO, logger="shardtune")
    tokenizer = check_model(pretrained(model_dir, "method=full"))
    assert len(tokenizer) == 260  # the directory's own (the tiny tokenizer has 259)
    expected = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(model_dir).parameters())
    assert f"model my-llama ({model_dir}): llama, {expected:,} params ({expected:,} trainable" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_tokenizer_with_more_ids_than_embedding_rows_is_refused(tmp_path, model_dir):
    small = tmp_path / "small"
    save_model(small, vocab_size=200)
    error = refused(pretrained(small))  # its own tokenizer: the model directory is inconsistent
    assert error.key == "model.name_or_path" and "260 tokens" in str(error) and "200 embedding rows" in str(error)
    save_model(small, vocab_size=200, with_tokenizer=False)
    error = refused(pretrained(small, f"model.tokenizer={model_dir}"))
    assert error.key == "model.tokenizer" and "260 tokens" in str(error) and "200 embedding rows" in str(error)
    assert len(str(error).splitlines()) == 1


def test_a_random_model_too_small_for_its_tokenizer_is_refused(model_dir):
    error = refused(compose_cfg("model=tiny", f"model.tokenizer={model_dir}", "model.architecture.vocab_size=256"))
    assert error.key == "model.tokenizer" and "256 embedding rows" in str(error)
    check_model(compose_cfg("model=tiny"))  # 259 tokens in 320 rows


def test_a_model_directory_without_a_tokenizer_names_the_key(tmp_path):
    save_model(tmp_path / "bare", with_tokenizer=False)
    error = refused(pretrained(tmp_path / "bare"))
    assert error.key == "model.name_or_path" and "model.tokenizer" in str(error)


def test_a_config_that_is_not_a_causal_lm_is_refused(tmp_path):
    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=300).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(asset_path("tiny-tokenizer")).save_pretrained(tmp_path)
    error = refused(pretrained(tmp_path))
    assert error.key == "model.name_or_path" and "causal language model" in str(error)


@pytest.mark.parametrize("template, fragment", [
    ("{% for m in messages %}{{ m['content'] }}", "TemplateSyntaxError"),
    ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    ("{% for m in messages %}{{ m['role'] }}{% endfor %}", "leaves the assistant's answer out"),
], ids=["syntax", "raises", "drops-the-answer"])
def test_a_chat_template_that_does_not_render_is_refused(model_dir, template, fragment):
    cfg = pretrained(model_dir, "data.format=chat", values={"data.chat_template": template})
    error = refused(cfg)
    assert error.key == "data.chat_template" and fragment in str(error)
    check_model(pretrained(model_dir, "data.format=chat"))  # the tokenizer's own template renders


def test_a_chat_template_is_not_needed_for_other_formats(model_dir):
    check_model(pretrained(model_dir, values={"data.chat_template": "{{ raise_exception('unused') }}"}))


def test_a_groups_architecture_that_differs_from_the_model_is_named(model_dir, caplog):
    caplog.set_level(logging.INFO, logger="shardtune")
    tokenizer = check_model(compose_cfg("model=tiny_base", f"model.name_or_path={model_dir}",
                                        "model.architecture.rope_theta=500000.0"))
    assert len(tokenizer) == 260  # tiny_base's tokenizer follows the path
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "model.architecture is ignored" in warnings[0]
    assert "hidden_size=128 (the model's: 64)" in warnings[0] and "vocab_size=320 (the model's: 272)" in warnings[0]
    assert "rope_theta=500000.0 (the model's: 10000.0)" in warnings[0]  # nested in rope_parameters by transformers
    caplog.clear()
    check_model(compose_cfg("model=tiny_base"))  # the shipped base matches its group's architecture
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_another_tokenizer_than_the_models_own_is_named(model_dir, caplog):
    tiny_tokenizer = asset_path("tiny-tokenizer")
    check_model(compose_cfg("model=tiny_base", f"model.name_or_path={model_dir}", f"model.tokenizer={tiny_tokenizer}"))
    assert f"model.tokenizer={tiny_tokenizer} is used instead of the tokenizer saved with the model" in caplog.text


# --------------------------------------------------------------------------- plan


def test_plan_sizes_a_local_pretrained_model_from_its_own_config(model_dir):
    num_params = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(model_dir).parameters())
    for cfg in (pretrained(model_dir, "method=full"),
                compose_cfg("model=tiny_base", f"model.name_or_path={model_dir}", "method=full")):
        assert model_config(cfg.model).hidden_size == 64  # not tiny_base's architecture (128)
        assert estimate_memory(cfg, 2).num_parameters == num_params
    # A hub model's group is sized from its architecture, offline.
    assert model_config(compose_cfg("model=llama3.1-8b").model).hidden_size == 4096

