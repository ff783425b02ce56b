"""model.attn_implementation=auto: sdpa, and flash attention's variable-length kernel for packed rows where it can
run; a kernel asked for by name that is not installed is refused naming the key, before any worker starts."""
import pytest

from shardtune import attention
from shardtune.errors import ConfigError

from conftest import compose_cfg, run_shardtune


def test_auto_is_sdpa_for_unpacked_rows_everywhere(monkeypatch):
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: True)
    assert attention.choose(compose_cfg(), "cuda") == ("sdpa", "")
    assert attention.describe(compose_cfg(), "cpu") == "attention: sdpa"


def test_auto_takes_flash_attention_for_packed_rows_where_it_can(monkeypatch):
    packed = compose_cfg("data.packing=true")
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: True)
    assert attention.choose(packed, "cuda") == ("flash_attention_2", "")
    fp32 = compose_cfg("data.packing=true", "train.precision=fp32")
    assert attention.choose(fp32, "cuda")[1].endswith("needs bf16 or fp16")
    assert attention.describe(packed, "cpu") == (
        "attention: sdpa (packed rows attend through a block-diagonal mask; flash attention's variable-length kernel "
        "needs a CUDA GPU)")
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: False)
    assert attention.choose(packed, "cuda")[1].endswith("needs the flash-attn package (pip install flash-attn)")


def test_a_named_implementation_is_passed_on():
    named = compose_cfg("model.attn_implementation=eager", "data.packing=true")
    assert attention.choose(named, "cuda") == ("eager", "")


def test_flash_attention_without_its_package_is_refused_before_workers_start(tmp_path, monkeypatch):
    installed = attention.flash_attn_installed()
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: False)
    with pytest.raises(ConfigError, match="model.attn_implementation: flash_attention_2 needs the flash-attn"):
        attention.choose(compose_cfg("model.attn_implementation=flash_attention_2"), "cuda")
    if installed:  # the command checks for the real package
        pytest.skip("flash-attn is installed here")
    result = run_shardtune("train", "model.attn_implementation=flash_attention_2", f"output_dir={tmp_path / 'run'}",
                           check=False)
    assert result.returncode != 0 and "model.attn_implementation: flash_attention_2 needs" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_plan_says_which_attention_and_why():
    result = run_shardtune("plan", "data.packing=true")
    assert ("attention: sdpa (packed rows attend through a block-diagonal mask; flash attention's variable-length "
            "kernel needs a CUDA GPU)") in result.stdout
