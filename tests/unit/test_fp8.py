"""train.fp8: auto stays off (until its loss curve is shown on a GPU) and says why; a recipe asked for by name is
refused, naming the key, where the run cannot have it: LoRA, CPU, DeepSpeed, no torchao."""
import pytest
from omegaconf import OmegaConf

from shardtune.errors import ConfigError
from shardtune.trainer import fp8


def train(value: str):
    return OmegaConf.create({"fp8": value})


def test_auto_is_off_and_says_why(monkeypatch):
    monkeypatch.setattr(fp8, "torchao_installed", lambda: True)
    assert fp8.describe(*fp8.choose(train("auto"), "cuda", "full", "fsdp")) == "fp8: off (auto does not use it yet)"
    assert fp8.describe(*fp8.choose(train("auto"), "cpu", "full", "fsdp")) == "fp8: off (needs a CUDA GPU)"
    assert fp8.describe(*fp8.choose(train("none"), "cuda", "full", "fsdp")) == "fp8: off"


@pytest.mark.parametrize("device, method, kind, installed, reason", [
    ("cuda", "lora", "fsdp", True, "only for full fine-tuning"),
    ("cpu", "full", "ddp", True, "needs a CUDA GPU"),
    ("cuda", "full", "deepspeed", True, "only with DDP and FSDP, not DeepSpeed"),
    ("cuda", "full", "fsdp", False, "needs torchao")])
def test_a_recipe_the_run_cannot_have_is_refused(monkeypatch, device, method, kind, installed, reason):
    monkeypatch.setattr(fp8, "torchao_installed", lambda: installed)
    with pytest.raises(ConfigError, match=f"train.fp8.*tensorwise: {reason}"):
        fp8.choose(train("tensorwise"), device, method, kind)


def test_a_recipe_the_run_can_have_is_used(monkeypatch):
    monkeypatch.setattr(fp8, "torchao_installed", lambda: True)
    assert fp8.choose(train("rowwise"), "cuda", "full", "ddp") == ("rowwise", "")
