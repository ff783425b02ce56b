"""`shardtune train model.name_or_path=<dir>` fine-tunes the model in <dir> with its own tokenizer and config (not
the default tiny model), and the run's summary names it with its parameter counts."""
import json
import math

import torch
from conftest import FAST, run_shardtune, train_losses
from omegaconf import OmegaConf
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from shardtune.config import asset_path
from shardtune.run_dir import SUMMARY_FILE


def test_a_model_directory_alone_is_the_model_that_trains(tmp_path):
    # A model unlike model=tiny (2 layers of 64, 272 embedding rows) whose tokenizer has one token more than the
    # tiny tokenizer: a run that used either of tiny's would show in the counts below.
    model_dir = tmp_path / "my-llama"
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tiny-tokenizer"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|sep|>"]})
    config = LlamaConfig(vocab_size=272, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    base_params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    output_dir = tmp_path / "run"
    result = run_shardtune("train", f"model.name_or_path={model_dir}", *FAST, "method.dropout=0",
                           f"output_dir={output_dir}", f"data.cache_dir={tmp_path / 'cache'}")

    summary = json.loads((output_dir / SUMMARY_FILE).read_text())
    assert (summary["model"], summary["model_source"]) == ("my-llama", str(model_dir))
    adapters = summary["trainable_parameters"]
    assert summary["parameters"] == base_params + adapters  # LoRA over this model, not tiny's 1M parameters
    # LoRA r=16 on every linear layer: 2 layers x (q, k, v, o, gate, up, down) of this shape.
    attention = 16 * ((64 + 64) * 2 + (64 + 32) * 2)
    assert adapters == 2 * (attention + 16 * ((64 + 160) * 2 + (160 + 64)))
    assert f"{base_params + adapters:,}" in result.stdout  # the end-of-run table
    assert f"model my-llama ({model_dir})" in result.stdout + result.stderr  # the launcher's and workers' logs

    run_config = OmegaConf.load(output_dir / "config.yaml").model
    assert (run_config.name, run_config.name_or_path, run_config.init) == ("my-llama", str(model_dir), "pretrained")
    assert run_config.tokenizer is None and not run_config.architecture
    assert len(AutoTokenizer.from_pretrained(output_dir / "final")) == 260  # the directory's tokenizer

    losses = train_losses(output_dir)
    assert sorted(losses) == list(range(1, 9)) and all(math.isfinite(loss) for loss in losses.values())
    assert abs(losses[1] - math.log(272)) < 0.05  # a random model's first loss: ln of its own vocabulary (tiny: 320)
    assert losses[8] < losses[1], losses
