"""`shardtune export` round trips: the exported directory loads with plain transformers (no peft, no
bitsandbytes) and gives the logits of the trained, unmerged model that load_trained_model rebuilds, on
real validation batches. Covers LoRA (DDP), QLoRA 4-bit and 8-bit (FSDP, DDP), and full fine-tuning from
final/, from a ZeRO-3 checkpoint and from an FSDP torch.distributed.checkpoint."""
import functools
import json
from pathlib import Path

import pytest
import torch
from conftest import run_shardtune
from transformers import AutoModelForCausalLM

from shardtune.data import Collator, ShardedBatches, build
from shardtune.export import ExportError, export_model
from shardtune.finished_run import RunDirError, build_trained_model, load_trained_model, resolve_source

# Tolerances on max |exported - trained| over the non-padding logits, relative to the largest |logit|
# of the trained model (about 2 here). Training moved the logits by more than that scale (the adapters
# alone change them by ~120% of it), so each bound is far below what a missing or misplaced weight does.
# fp32: merging only reorders fp32 sums (x W + s (x A) B against x (W + s A B)); measured 3e-7 (a few
# units of fp32's 1.2e-7), full fine-tunes exactly 0; 1e-5 leaves 30x headroom.
FP32_RTOL = 1e-5
# bf16: every weight and activation is rounded to 8 significant bits (unit roundoff 3.9e-3); measured
# 3.5e-3 through 4 layers.
BF16_RTOL = 2e-2
# LLM.int8's matmul quantizes the activations to int8 as well, which a plain nn.Linear over the
# dequantized weight does not; measured 1.6e-3. Against the dequantized, unmerged model it is FP32_RTOL.
INT8_RTOL = 1e-2

# The runs (conftest.SHARED_RUNS, also read by the pair matrix): FAST, a checkpoint at step 4.
RUNS = ["lora-ddp", "qlora-fsdp", "qlora8-ddp", "full-zero3", "full-fsdp"]
# (run, checkpoint, dtype, tolerance); checkpoint None is final/.
CASES = [
    ("lora-ddp", None, "fp32", FP32_RTOL),
    ("lora-ddp", None, "bf16", BF16_RTOL),
    ("qlora-fsdp", None, "fp32", FP32_RTOL),
    ("qlora-fsdp", "step-4", "fp32", FP32_RTOL),
    ("qlora8-ddp", None, "fp32", INT8_RTOL),
    ("full-zero3", None, "fp32", FP32_RTOL),
    ("full-zero3", "step-4", "fp32", FP32_RTOL),
    ("full-fsdp", "step-4", "fp32", FP32_RTOL),
]
# These go through the real command with its default output directory; the others call export_model.
CLI_CASES = {("lora-ddp", None, "fp32"), ("full-zero3", "step-4", "fp32")}
HF_FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def runs(shared_run):
    return {name: shared_run(name) for name in RUNS}


def validation_batches(cfg, tokenizer, count: int = 2) -> list:
    val_rows = build(cfg.data, tokenizer, cfg.train.seq_len, cfg.train.seed).validation
    batches = ShardedBatches(val_rows, cfg.train.micro_batch_size, 0, 1, cfg.train.seed,
                             Collator(tokenizer.pad_token_id), shuffle=False).iterate(0)
    return [next(batches) for _ in range(count)]


@torch.no_grad()
def logits_of(model, batches) -> list:
    return [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float() for b in batches]


@functools.cache
def trained_logits(run_dir: Path, checkpoint=None) -> tuple:
    """(batches, logits) of the trained model: computed once per run and checkpoint, since the 4-bit
    layers of bitsandbytes' CPU backend take seconds per forward pass."""
    trained = load_trained_model(run_dir, checkpoint)
    batches = validation_batches(trained.config, trained.tokenizer)
    return batches, logits_of(trained.model, batches)


def max_relative_diff(expected: list, actual: list, batches) -> float:
    worst = 0.0
    for want, got, batch in zip(expected, actual, batches):
        real = batch["attention_mask"].bool()  # padded positions are never read
        worst = max(worst, ((got - want)[real].abs().max() / want[real].abs().max()).item())
    return worst


def diff_to_trained(run_dir, checkpoint, model) -> float:
    batches, expected = trained_logits(run_dir, checkpoint)
    return max_relative_diff(expected, logits_of(model, batches), batches)


def export(run_dir, checkpoint, dtype, output_dir) -> str:
    if (run_dir.name, checkpoint, dtype) in CLI_CASES:
        result = run_shardtune("export", str(run_dir), "--dtype", dtype, *(["--checkpoint", checkpoint] if checkpoint else []))
        return result.stdout.strip().splitlines()[-1]  # the command prints where it wrote
    return str(export_model(run_dir, output_dir, checkpoint=checkpoint, dtype=dtype))


@pytest.mark.parametrize("run,checkpoint,dtype,tolerance", CASES,
                         ids=[f"{r}-{c or 'final'}-{d}" for r, c, d, _ in CASES])
def test_export_reproduces_the_trained_model(runs, tmp_path, run, checkpoint, dtype, tolerance):
    run_dir = runs[run]
    output_dir = export(run_dir, checkpoint, dtype, tmp_path / "export")
    if (run, checkpoint, dtype) in CLI_CASES:  # written to the default place
        assert output_dir == str(run_dir / ("export" if checkpoint is None else f"export-{checkpoint}"))

    names = sorted(path.name for path in Path(output_dir).iterdir())
    assert set(HF_FILES) <= set(names), names
    assert not [name for name in names if name.startswith("adapter")], names  # merged: nothing for peft to read
    config = json.loads(Path(output_dir, "config.json").read_text())
    assert "quantization_config" not in config and config["use_cache"] is True

    exported = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    assert type(exported).__name__ == "LlamaForCausalLM"
    assert exported.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    diff = diff_to_trained(run_dir, checkpoint, exported)
    print(f"\n{run} {checkpoint or 'final'} {dtype}: max |logit diff| / max |logit| = {diff:.2e}")
    assert diff < tolerance


@pytest.mark.parametrize("run", ["full-zero3", "full-fsdp", "qlora-fsdp"])
def test_a_checkpoint_loads_the_weights_it_saved(runs, run):
    """The step-8 checkpoint holds the weights final/ holds (same logits, bit for bit); step-4 others."""
    batches, final = trained_logits(runs[run])
    assert max_relative_diff(final, trained_logits(runs[run], "step-8")[1], batches) == 0
    assert max_relative_diff(final, trained_logits(runs[run], "step-4")[1], batches) > 0.05


def test_qlora_export_merges_into_the_dequantized_base_not_the_original_weights(runs):
    from peft import PeftModel
    run_dir = runs["qlora-fsdp"]
    # The adapters merged into the weights the run quantized (what a naive merge does) are off by far more
    # than the tolerance: the round trip above tells the two apart.
    original = AutoModelForCausalLM.from_pretrained(run_dir / "random-init", dtype=torch.float32)
    naive = PeftModel.from_pretrained(original, run_dir / "final").merge_and_unload().eval()
    diff = diff_to_trained(run_dir, None, naive)
    print(f"\nqlora adapters merged into the original weights: {diff:.2e}")
    assert diff > 100 * FP32_RTOL


def test_int8_export_is_the_dequantized_model_with_the_adapters_merged(runs, tmp_path):
    """LLM.int8 cannot be reproduced to fp32 precision by plain layers (it quantizes activations); the
    export is, against the same adapters over bitsandbytes' dequantized int8 weights."""
    run_dir = runs["qlora8-ddp"]
    output_dir = export_model(run_dir, tmp_path / "export", dtype="fp32")
    dequantized = build_trained_model(resolve_source(run_dir), torch.device("cpu"), dequantize_to=torch.float32)
    exported = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    batches, _ = trained_logits(run_dir)
    diff = max_relative_diff(logits_of(dequantized, batches), logits_of(exported, batches), batches)
    print(f"\nint8 export against the unmerged dequantized model: {diff:.2e}")
    assert diff < FP32_RTOL


def test_export_refuses_to_overwrite_unless_forced(runs, tmp_path):
    output_dir = tmp_path / "export"
    export_model(runs["full-fsdp"], output_dir, dtype="fp32")
    first = (output_dir / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(ExportError, match=str(output_dir)):
        export_model(runs["full-fsdp"], output_dir, checkpoint="step-4", dtype="fp32")
    assert (output_dir / "model.safetensors").stat().st_mtime_ns == first  # untouched

    export_model(runs["full-fsdp"], output_dir, checkpoint="step-4", dtype="fp32", force=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]  # no .tmp or .old left behind
    exported = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    assert diff_to_trained(runs["full-fsdp"], "step-4", exported) == 0  # step-4's weights replaced final/'s


def test_a_checkpoint_of_another_kind_of_run_is_refused_naming_it(runs):
    adapters = runs["qlora-fsdp"] / "checkpoints" / "step-4"  # DCP, adapters only
    with pytest.raises(RunDirError, match=f"checkpoint {adapters} does not match the run's model: Missing key"):
        load_trained_model(runs["full-fsdp"], str(adapters))
    zero = runs["full-zero3"] / "checkpoints" / "step-4"
    with pytest.raises(RunDirError, match=f"checkpoint {zero} is a DeepSpeed checkpoint, but method=lora"):
        load_trained_model(runs["lora-ddp"], str(zero))
