"""Unit tests for shardtune.trainer.metrics: the FLOP model, the peak-FLOP table, the throughput
meter, metrics.jsonl (including resume truncation) and W&B offline runs read back from disk."""
import json
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from wandb_reader import history_and_summary

from shardtune.config import Config, LoggerConfig
from shardtune.trainer.metrics import (
    MetricsLogger,
    ThroughputMeter,
    flops_per_token,
    memory_stats,
    peak_flops,
    peak_flops_for_device_name,
)

SEQ_LEN = 256


def tiny_llama_config(tie_word_embeddings: bool) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie_word_embeddings,
    )


def count_params(model: torch.nn.Module):
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def hf_baseline_flops(cfg: LlamaConfig, num_params: int) -> int:
    """The formula of the Hugging Face baseline (shared/anchors/hf_baseline.py), for full fine-tuning."""
    L, H, Q = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    non_emb = num_params - cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    return 6 * (non_emb + cfg.vocab_size * cfg.hidden_size) + 12 * L * H * Q * SEQ_LEN


@pytest.mark.parametrize("tied", [False, True])
def test_full_finetune_flops_equal_hf_baseline_formula(tied):
    cfg = tiny_llama_config(tied)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    num_params, num_trainable = count_params(model)
    assert num_params == num_trainable
    assert flops_per_token(cfg, SEQ_LEN, num_params, num_trainable) == hf_baseline_flops(cfg, num_params)


def test_lora_flops_are_4n_plus_adapter_gradients():
    peft = pytest.importorskip("peft")
    cfg = tiny_llama_config(False)
    model = peft.get_peft_model(LlamaForCausalLM(cfg), peft.LoraConfig(r=4, target_modules="all-linear"))
    num_params, num_trainable = count_params(model)
    matmul_params = num_params - cfg.vocab_size * cfg.hidden_size  # adapters included, input embedding not
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * SEQ_LEN
    lora = flops_per_token(cfg, SEQ_LEN, num_params, num_trainable)
    assert lora == 4 * matmul_params + 2 * num_trainable + attention
    assert lora < flops_per_token(cfg, SEQ_LEN, num_params, num_params)


def test_attention_flops_use_heads_times_head_dim():
    # Gemma-7B-like: 4 heads of 32 = 128 wide attention in a 64-wide model.
    cfg = LlamaConfig(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, head_dim=32)
    matmul_only = flops_per_token(cfg, 0, 10_000 + 2 * 320 * 64, 0)
    assert flops_per_token(cfg, SEQ_LEN, 10_000 + 2 * 320 * 64, 0) - matmul_only == 12 * 2 * 128 * SEQ_LEN


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA A10G", 70e12), ("NVIDIA A10", 125e12), ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12),
    ("Tesla T4", None), ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_flops_for_device_name(name, expected):
    assert peak_flops_for_device_name(name) == expected


def test_cpu_has_no_peak_flops_and_reports_host_memory():
    assert peak_flops("cpu") is None
    stats = memory_stats(torch.device("cpu"))
    assert list(stats) == ["host_rss_gib"]
    assert 0.01 < stats["host_rss_gib"] < 1024


def test_throughput_meter_with_fake_clock(monkeypatch):
    # Steps at [100, 101] and [101, 102]; a 5 s evaluation pause; then a step at [107, 108].
    clock = iter([100.0, 101.0, 101.0, 102.0, 107.0, 108.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    meter = ThroughputMeter(flops_per_token=1e6, peak_flops_per_device=1e10, world_size=2, device="cpu")
    for _ in range(2):
        meter.step_started()
        meter.step_done(4000)
    first = meter.rates()  # 8000 tokens in 2 s over 2 steps
    assert first == pytest.approx({"tokens_per_second": 4000.0, "tokens_per_second_per_device": 2000.0,
                                   "step_time_s": 1.0, "mfu": 2000.0 * 1e6 / 1e10})
    meter.step_started()
    meter.step_done(1000)
    second = meter.rates()  # the window restarted at the last rates(); the pause is not counted
    assert second["tokens_per_second"] == pytest.approx(1000.0)
    assert second["step_time_s"] == pytest.approx(1.0)
    assert meter.totals()["tokens_per_second"] == pytest.approx(9000.0 / 3.0)
    assert meter.rates() == {}  # nothing since the last window

    no_peak = ThroughputMeter(flops_per_token=1e6, peak_flops_per_device=None, world_size=1, device="cpu")
    monkeypatch.setattr(time, "perf_counter", iter([0.0, 1.0]).__next__)
    no_peak.step_started()
    no_peak.step_done(10)
    assert no_peak.rates()["mfu"] is None


def make_cfg(output_dir: Path, logger_name: str = "none"):
    cfg = OmegaConf.structured(Config)
    cfg.output_dir = str(output_dir)
    cfg.logger = OmegaConf.structured(LoggerConfig(name=logger_name, tags=["unit"]))
    return cfg


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_jsonl_has_one_line_per_log_call(tmp_path):
    logger = MetricsLogger(make_cfg(tmp_path), rank=0, world_size=2, total_steps=3, start_step=0, resumed=False)
    logger.log(1, {"loss": torch.tensor(2.5), "lr": 1e-4, "grad_norm": 0.75, "mfu": None})
    logger.log(2, {"loss": 2.0, "lr": 1e-4, "tokens_per_second": 1234.5})
    logger.log(2, {"val/loss": 1.9, "val/ppl": 6.69})
    logger.summary({"loss": 2.0, "val/loss": 1.9, "mfu": None, "saved_to": str(tmp_path / "final")})
    logger.close()
    logger.close()  # the trainer's `finally` may close again

    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 2]
    assert records[0]["loss"] == 2.5 and records[0]["grad_norm"] == 0.75 and "mfu" not in records[0]
    assert records[1]["tokens_per_second"] == 1234.5
    assert records[2]["val/loss"] == 1.9 and records[2]["val/ppl"] == 6.69
    assert all(abs(r["time"] - time.time()) < 60 for r in records)


def test_only_rank_zero_writes(tmp_path):
    logger = MetricsLogger(make_cfg(tmp_path), rank=1, world_size=2, total_steps=3, start_step=0, resumed=False)
    logger.log(1, {"loss": 1.0})
    logger.summary({"loss": 1.0})
    logger.close()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resume_drops_lines_past_the_checkpoint(tmp_path):
    first = MetricsLogger(make_cfg(tmp_path), rank=0, world_size=1, total_steps=10, start_step=0, resumed=False)
    for step in range(1, 6):
        first.log(step, {"loss": 10.0 - step})
    first.log(3, {"val/loss": 7.5})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss"')  # torn line from a crash mid-write

    # The checkpoint was at step 3: steps 4, 5 and the torn 6 are redone by the resumed run.
    resumed = MetricsLogger(make_cfg(tmp_path), rank=0, world_size=1, total_steps=10, start_step=3, resumed=True)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 3]
    resumed.log(4, {"loss": 0.5})
    resumed.close()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 3, 4]
    assert [r.get("loss") for r in records] == [9.0, 8.0, 7.0, None, 0.5]
    assert not list(tmp_path.glob("*.tmp"))

    fresh = MetricsLogger(make_cfg(tmp_path), rank=0, world_size=1, total_steps=10, start_step=0, resumed=False)
    fresh.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_wandb_offline_run_is_written_under_output_dir_and_resumed(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # logger.mode is null: the environment decides
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # dir=output_dir must win
    output_dir = tmp_path / "run-a"
    cfg = make_cfg(output_dir, "wandb")

    logger = MetricsLogger(cfg, rank=0, world_size=1, total_steps=3, start_step=0, resumed=False)
    for step in (1, 2, 3):
        logger.log(step, {"loss": 3.0 - step / 2, "lr": 1e-3})
    logger.log(3, {"val/loss": 1.75, "val/ppl": 5.75})
    logger.summary({"loss": 1.5, "val/loss": 1.75})
    logger.close()

    run_id = (output_dir / "wandb_run_id").read_text().strip()
    run_dirs = list((output_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(run_dirs) == 1
    history, summary, exit_codes, run = history_and_summary(run_dirs[0])
    assert [(h["_step"], h.get("loss"), h.get("val/loss")) for h in history] == [
        (1, 2.5, None), (2, 2.0, None), (3, 1.5, 1.75)]  # W&B merges the two records of step 3
    assert summary["loss"] == 1.5 and summary["val/loss"] == 1.75 and summary["wall_time_s"] > 0
    assert exit_codes == [0]
    assert run.run_id == run_id and run.display_name == "run-a" and list(run.tags) == ["unit"]

    # A resumed run continues the same W&B run; an error in flight marks it failed. Offline run
    # directories are named by the second they start in: move the first aside so the two never collide.
    run_dirs[0].rename(tmp_path / "first-run")
    resumed = MetricsLogger(cfg, rank=0, world_size=1, total_steps=5, start_step=3, resumed=True)
    with pytest.raises(RuntimeError):
        try:
            resumed.log(4, {"loss": 1.0})
            raise RuntimeError("simulated crash")
        finally:
            resumed.close()
    assert (output_dir / "wandb_run_id").read_text().strip() == run_id
    run_dirs = list((output_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(run_dirs) == 1
    history, _, exit_codes, _ = history_and_summary(run_dirs[0])
    assert [(h["_step"], h["loss"]) for h in history] == [(4, 1.0)]
    assert exit_codes == [1]
    assert not (tmp_path / "elsewhere").exists()
