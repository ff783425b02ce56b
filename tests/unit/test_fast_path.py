"""train.kernels and train.compile: auto picks the fast path where the device and model have it and says why not
elsewhere; a part asked for by name that cannot be had is refused naming its key, before any worker starts."""
import pytest
from omegaconf import OmegaConf

from shardtune.errors import ConfigError
from shardtune.trainer.fast_path import choose

from conftest import compose_cfg, run_shardtune


def train(**values):
    return OmegaConf.create({"kernels": "auto", "compile": "auto", "lora_kernel": "auto", "activation_checkpointing": False,
                             **values})


FULL = OmegaConf.create({"name": "full", "use_dora": False})  # LoRA's fused layers: tests/unit/test_fused_lora.py


def test_auto_is_off_on_cpu_and_says_why():
    fast = choose(train(), FULL, "cpu", "llama")
    assert not fast.liger and not fast.compile_blocks
    assert fast.describe() == ("kernels: none; compile: none (liger kernels off: needs a CUDA GPU; "
                               "compile off: needs a CUDA GPU)")


def test_auto_on_cuda_skips_architectures_liger_is_not_used_with(monkeypatch):
    monkeypatch.setattr("shardtune.trainer.fast_path.liger_installed", lambda: True)
    # Compiled blocks fuse the norms, RoPE and SwiGLU themselves; Liger keeps the loss.
    for checkpointing in (False, True):  # every method alike: full, LoRA, QLoRA
        assert choose(train(activation_checkpointing=checkpointing), FULL, "cuda", "llama").describe() == (
            "kernels: liger (fused linear cross-entropy); compile: per block")
    gpt2 = choose(train(), FULL, "cuda", "gpt2")
    assert not gpt2.liger and not gpt2.compile_blocks and "model_type 'gpt2'" in gpt2.describe()
    assert "auto compiles llama, mistral, qwen2, qwen3 blocks only" in gpt2.describe()


def test_liger_by_name_is_refused_where_it_cannot_run(monkeypatch):
    with pytest.raises(ConfigError, match="train.kernels.*needs a CUDA GPU"):
        choose(train(kernels="liger"), FULL, "cpu", "llama")
    monkeypatch.setattr("shardtune.trainer.fast_path.liger_installed", lambda: False)
    with pytest.raises(ConfigError, match="train.kernels.*liger-kernel is not installed"):
        choose(train(kernels="liger"), FULL, "cuda", "llama")


def test_none_turns_each_part_off_without_a_reason():
    assert choose(train(kernels="none", compile="none"), FULL, "cuda", "llama").describe() == "kernels: none; compile: none"


def test_unknown_values_and_liger_on_cpu_are_refused_before_workers_start(tmp_path):
    for settings, message in [("train.kernels=fast", "train.kernels: expected one of auto, liger, none"),
                              ("train.compile=yes", "train.compile: expected one of auto, blocks, none"),
                              ("train.lora_kernel=yes", "train.lora_kernel: expected one of auto, fused, peft"),
                              ("train.kernels=liger", "train.kernels: liger needs a CUDA GPU"),
                              ("method=qlora train.lora_kernel=fused", "train.lora_kernel: fused: not for QLoRA")]:
        result = run_shardtune("train", *settings.split(), f"output_dir={tmp_path / 'run'}", check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_plan_prints_the_fast_path():
    result = run_shardtune("plan")
    assert "fast path: kernels: none; compile: none (liger kernels off: needs a CUDA GPU" in result.stdout
    assert compose_cfg().train.kernels == "auto"
