"""The data pipeline's GPU paths: packed attention on CUDA kernels, and eval / export of a QLoRA run with
bitsandbytes' CUDA kernels."""
import json

import pytest
import torch

from conftest import FAST, compose_cfg, final_val_loss, run_shardtune

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def flash_attention_available() -> bool:
    try:
        import flash_attn  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("attention, dtype, rel", [
    ("sdpa", torch.float32, 1e-4), ("sdpa", torch.bfloat16, 2e-2), ("flex_attention", torch.bfloat16, 2e-2),
    pytest.param("flash_attention_2", torch.bfloat16, 2e-2,
                 marks=pytest.mark.skipif(not flash_attention_available(), reason="flash_attn is not installed")),
])
def test_packed_loss_equals_unpacked_on_gpu(attention, dtype, rel):
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from shardtune.config import asset_path
    from shardtune.data import Collator, build
    from shardtune.data.packing import pack_examples

    cfg = compose_cfg()
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tiny-tokenizer"))
    examples = build(OmegaConf.merge(cfg.data, {"val_fraction": 0.0, "test_fraction": 0.0}), tokenizer, 128, 0).train
    examples = examples.select(range(64))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg.model.architecture),
                                             attn_implementation=attention, dtype=dtype).cuda().eval()
    model.config.use_cache = False
    collate = Collator(tokenizer.pad_token_id)

    def summed(batches):
        total = 0.0
        with torch.no_grad():
            for batch in batches:
                batch.pop("num_tokens")
                total += model(**{k: v.cuda() for k, v in batch.items()}, num_items_in_batch=1).loss.float().item()
        return total

    unpacked = [collate(examples.select(range(i, i + 8)).to_list()) for i in range(0, 64, 8)]
    packed_rows = pack_examples(examples, seq_len=512)
    packed = [collate(packed_rows.select(range(i, min(i + 2, len(packed_rows)))).to_list())
              for i in range(0, len(packed_rows), 2)]
    assert summed(packed) == pytest.approx(summed(unpacked), rel=rel)


def test_qlora_run_evaluates_and_exports_on_gpu(tmp_path):
    run_dir = tmp_path / "qlora"
    run_shardtune("train", "method=qlora", "strategy=fsdp", f"output_dir={run_dir}", *FAST,
                  "launcher.nproc_per_node=1", "train.precision=bf16")
    run_shardtune("eval", str(run_dir), "--split", "validation", "--compare-base", "--max-new-tokens", "8")
    results = json.loads((run_dir / "eval.json").read_text())
    assert results["model"]["loss"] == pytest.approx(final_val_loss(run_dir), rel=2e-2)
    assert results["base"]["loss"] > results["model"]["loss"]
    run_shardtune("export", str(run_dir), "--dtype", "bf16")
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(run_dir / "export", dtype=torch.bfloat16).cuda()
    assert not any("lora" in name for name, _ in model.named_parameters())
