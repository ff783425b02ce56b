"""Every required (method, strategy) pair trains on 2 gloo workers, its loss falls, and strategies
that do the same math agree step by step."""
import pytest

from conftest import final_val_loss, train_losses

PAIRS = [("full", "zero1"), ("full", "zero2"), ("full", "zero3"), ("full", "zero3_offload"),
         ("full", "ddp"), ("full", "fsdp"), ("lora", "ddp"), ("lora", "fsdp"), ("qlora", "ddp"), ("qlora", "fsdp")]
# Same seed, data and math; only the order of floating-point sums differs between strategies.
AGREEMENT_RTOL = 2e-4


@pytest.fixture(scope="module")
def runs(shared_run):
    """Each pair trained once (conftest.SHARED_RUNS: FAST, LoRA dropout off, lora-ddp logs to W&B); the tests
    below read the run directories."""
    return {(method, strategy): shared_run(f"{method}-{strategy}") for method, strategy in PAIRS}


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_pair_trains_and_loss_falls(runs, pair):
    losses = train_losses(runs[pair])
    assert sorted(losses) == list(range(1, 9))
    first, last = losses[1], losses[8]
    assert last < first - 0.3, f"{pair}: loss went from {first:.4f} to {last:.4f}"
    final = runs[pair] / "final"
    expected = "adapter_model.safetensors" if pair[0] != "full" else "model.safetensors"
    assert (final / expected).is_file() and (final / "tokenizer.json").is_file()


@pytest.mark.parametrize("group", [
    [("full", s) for s in ("zero1", "zero2", "zero3", "zero3_offload", "ddp", "fsdp")],
    [("lora", "ddp"), ("lora", "fsdp")],
    [("qlora", "ddp"), ("qlora", "fsdp")],
], ids=["full-zero-ddp-fsdp", "lora-ddp-fsdp", "qlora-ddp-fsdp"])
def test_strategies_agree_step_by_step(runs, group):
    reference = train_losses(runs[group[0]])
    for pair in group[1:]:
        losses = train_losses(runs[pair])
        for step, loss in reference.items():
            assert losses[step] == pytest.approx(loss, rel=AGREEMENT_RTOL), f"{pair} vs {group[0]} at step {step}"


def test_wandb_offline_run_holds_what_metrics_jsonl_holds(runs):
    from wandb_reader import history_and_summary
    run_dir = runs[("lora", "ddp")]
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline_runs = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline_runs) == 1
    history, summary, exit_codes, _ = history_and_summary(offline_runs[0])
    logged = {h["_step"]: h["loss"] for h in history if "loss" in h}
    assert logged == pytest.approx(train_losses(run_dir))
    assert {"lr", "grad_norm", "tokens_per_second", "tokens_per_second_per_device", "step_time_s",
            "host_rss_gib"} <= set(history[0])
    assert summary["val/loss"] == pytest.approx(final_val_loss(run_dir))
    assert exit_codes == [0]


def reloaded_val_loss(run_dir) -> float:
    """Validation loss of final/ reloaded the way a user would (transformers / peft), over the same
    validation rows and micro-batches the 2 training ranks evaluated."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shardtune.config import load_resolved
    from shardtune.data import Collator, ShardedBatches, build
    from shardtune.trainer.model import quantization_config

    cfg = load_resolved(run_dir / "config.yaml")
    final = run_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    if cfg.method.name == "full":
        model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    else:  # peft finds the base model through adapter_config.json
        quantized = {}
        if cfg.method.name == "qlora":
            quantized = {"quantization_config": quantization_config(cfg.method, torch.float32), "device_map": {"": "cpu"}}
        model = AutoPeftModelForCausalLM.from_pretrained(final, dtype=torch.float32, **quantized)
    for module in model.modules():  # keep bitsandbytes on the layout training used (see trainer/model.py)
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    model.eval()
    val_rows = build(cfg.data, tokenizer, cfg.train.seq_len, cfg.train.seed).validation
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for rank in range(2):
            batches = ShardedBatches(val_rows, cfg.train.micro_batch_size, rank, 2, cfg.train.seed,
                                     Collator(tokenizer.pad_token_id), shuffle=False)
            for batch in batches.iterate(0):
                batch.pop("num_tokens")
                loss_sum += model(**batch, num_items_in_batch=1).loss.item()
                tokens += int((batch["labels"][:, 1:] != -100).sum())
    return loss_sum / tokens


@pytest.mark.parametrize("pair", [("full", "zero3"), ("full", "fsdp"), ("lora", "ddp"), ("lora", "fsdp"),
                                  ("qlora", "ddp")], ids=lambda p: "-".join(p))
def test_final_model_reloads_with_the_training_numbers(runs, pair):
    assert reloaded_val_loss(runs[pair]) == pytest.approx(final_val_loss(runs[pair]), rel=1e-5)
