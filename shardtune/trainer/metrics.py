"""What the training loop measures and where it reports it.

Owns the FLOP model behind MFU (`flops_per_token`), the table of GPU peak FLOP/s (`peak_flops`),
memory readings (`memory_stats`), the throughput meter the loop ticks every step (`ThroughputMeter`),
and `MetricsLogger`, the one place that writes metrics: `<output_dir>/metrics.jsonl`, W&B and the
console progress bar, on rank 0 only.

Metric keys are stable, because benchmarks, tests and dashboards read them by name:
loss, lr, grad_norm, tokens_per_second, tokens_per_second_per_device, step_time_s, mfu,
peak_mem_alloc_gib, peak_mem_reserved_gib, host_rss_gib, val/loss, val/ppl.
"""
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import psutil
import torch
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from ..run_dir import METRICS_FILE, SUMMARY_FILE, write_json_atomic
from .wandb_run import open_wandb_run

log = logging.getLogger("shardtune")

GIB = 2**30
Device = Union[str, torch.device]


def flops_per_token(model_config, seq_len: int, num_params: int, num_trainable_params: int) -> float:
    """Training FLOPs per token (forward + backward) of a decoder-only transformer.

    Matmuls: a weight matrix with P entries costs 2P FLOPs per token in the forward pass, 2P more in
    the backward pass to propagate gradients to the activations, and 2P more to compute the weight
    gradient, which is only done for trainable weights:

        matmul FLOPs = 2N + 2N + 2 * N_trainable      (full fine-tune: 6N; LoRA: about 4N)

    N counts every parameter that takes part in a matmul: the non-embedding parameters plus the
    output head (vocab_size * hidden_size). The head is counted even when tied to the input
    embedding, because the head matmul happens either way; the input embedding is not counted, since
    a lookup is not a matmul. LoRA adapters are in N (their small matmuls run too) and are what
    N_trainable counts. N_trainable is capped at N: in a full fine-tune the input embedding is
    trainable too, but its gradient is a scatter-add, not a matmul.

    Attention scores (QK^T and the weighted sum over V) involve no weights, so they are added as in
    PaLM (Chowdhery et al. 2022, appendix B): 12 * num_layers * width * seq_len per token. Per token
    and layer the forward pass costs 2 * width * seq_len for QK^T and as much for the product with V;
    the backward pass costs twice the forward. The causal mask's unused half is counted, as PaLM
    does. The width is num_attention_heads * head_dim: hidden_size for Llama, Mistral and Qwen2.5,
    and the true width of QK^T for models with their own head_dim (Gemma-7B, Qwen3).

    For a full fine-tune this equals the Hugging Face baseline's
    6 * (non_emb + vocab * hidden) + 12 * L * heads * head_dim * seq_len.

    num_params and num_trainable_params must count logical weights: a bitsandbytes 4-bit tensor
    stores two weights per element, so count it as peft's `get_nb_trainable_parameters` does.
    """
    hidden_size = model_config.hidden_size
    embedding_params = model_config.vocab_size * hidden_size
    num_embedding_matrices = 1 if model_config.tie_word_embeddings else 2
    non_embedding_params = num_params - num_embedding_matrices * embedding_params
    matmul_params = non_embedding_params + embedding_params  # the output head counts even if tied
    trainable_matmul_params = min(num_trainable_params, matmul_params)

    num_heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or hidden_size // num_heads
    attention_flops = 12 * model_config.num_hidden_layers * num_heads * head_dim * seq_len

    return float(4 * matmul_params + 2 * trainable_matmul_params + attention_flops)


# Dense (no 2:4 sparsity) bf16 tensor-core peak FLOP/s per GPU. NVIDIA's datasheets headline the
# sparse figure, which is twice these. Each entry names the tokens that must all appear in the
# lower-cased device name ("NVIDIA H100 80GB HBM3" -> nvidia, h100, 80gb, hbm3); the first match wins,
# so more specific entries come first. Unknown GPUs get None rather than a guess.
_DENSE_BF16_PEAK_FLOPS = (
    ({"h100", "nvl"}, 835e12),
    ({"h100", "pcie"}, 756e12),
    ({"h100", "hbm2e"}, 756e12),  # the PCIe card's memory; some drivers name it so
    ({"h100"}, 989e12),  # SXM: "NVIDIA H100 80GB HBM3"
    ({"h200", "nvl"}, 835e12),
    ({"h200"}, 989e12),
    ({"gh200"}, 989e12),
    ({"a100"}, 312e12),  # SXM and PCIe, 40 and 80 GB alike
    # AWS's A10G is not the A10: fewer tensor FLOPs (70 vs 125 TFLOP/s dense fp16/bf16).
    ({"a10g"}, 70e12),
    ({"a10"}, 125e12),
    ({"l40s"}, 362e12),
    ({"l40"}, 181e12),
    ({"l4"}, 121e12),
)


def peak_flops_for_device_name(device_name: str) -> Optional[float]:
    """Dense bf16 peak FLOP/s for a CUDA device name, or None when the GPU is not in the table."""
    tokens = set(device_name.lower().replace("-", " ").split())
    for required_tokens, flops in _DENSE_BF16_PEAK_FLOPS:
        if required_tokens <= tokens:
            return flops
    return None


def peak_flops(device: Device) -> Optional[float]:
    """Dense bf16 peak FLOP/s of one device; None on CPU and unknown GPUs (MFU is then not reported)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return peak_flops_for_device_name(torch.cuda.get_device_name(device))


def memory_stats(device: Device) -> Dict[str, float]:
    """Peak allocated/reserved GPU memory in GiB on CUDA; this process's resident host memory on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return {
            "peak_mem_alloc_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_mem_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
        }
    return {"host_rss_gib": psutil.Process().memory_info().rss / GIB}


def host_peak_gib() -> float:
    """This process's peak resident host memory (the kernel's high-water mark, VmHWM), in GiB; the current RSS
    where /proc is missing (not Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GIB  # reported in kB
    except OSError:
        pass
    return psutil.Process().memory_info().rss / GIB


def parameter_gib(model: torch.nn.Module) -> float:
    """GiB of parameters this rank holds: its shards under FSDP (DTensor) and ZeRO-3 (ds_tensor), all of them
    under DDP, packed storage for a quantized base."""
    total = 0
    for param in model.parameters():
        local = getattr(param, "ds_tensor", None)
        if local is None:
            local = param.to_local() if hasattr(param, "to_local") else param
        total += local.numel() * local.element_size()
    return total / GIB


class ThroughputMeter:
    """Tokens/s, step time and MFU, timed per optimizer step so evaluation and saving never count.

    The loop calls `step_started()` before each step and `step_done(tokens)` after it; `rates()` covers
    the steps since the previous `rates()`, `totals()` the whole run.
    """

    def __init__(self, flops_per_token: float, peak_flops_per_device: Optional[float], world_size: int, device: Device):
        self.flops_per_token = flops_per_token
        self.peak_flops_per_device = peak_flops_per_device
        self.world_size = world_size
        self.device = torch.device(device)
        self._step_start: Optional[float] = None
        self._window = [0, 0, 0.0]  # steps, tokens, seconds since the last rates()
        self._run = [0, 0, 0.0]  # the same over the whole run

    def _now(self) -> float:
        # CUDA kernels run asynchronously: without a sync the clock would measure how fast work was
        # queued, not how fast it ran.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step_started(self) -> None:
        self._step_start = self._now()

    def step_done(self, num_tokens_global: int) -> None:
        """Count one optimizer step that consumed num_tokens_global tokens summed over all ranks."""
        assert self._step_start is not None, "call step_started() first"
        seconds = self._now() - self._step_start
        for totals in (self._window, self._run):
            totals[0] += 1
            totals[1] += num_tokens_global
            totals[2] += seconds

    def _rates(self, steps: int, tokens: int, seconds: float) -> Dict[str, Optional[float]]:
        if steps == 0 or seconds <= 0:
            return {}
        tokens_per_second = tokens / seconds
        per_device = tokens_per_second / self.world_size
        mfu = per_device * self.flops_per_token / self.peak_flops_per_device if self.peak_flops_per_device else None
        return {"tokens_per_second": tokens_per_second, "tokens_per_second_per_device": per_device,
                "step_time_s": seconds / steps, "mfu": mfu}

    def rates(self) -> Dict[str, Optional[float]]:
        rates = self._rates(*self._window)
        self._window = [0, 0, 0.0]
        return rates

    def totals(self) -> Dict[str, Optional[float]]:
        return self._rates(*self._run)


def _drop_lines_after_step(metrics_path: Path, last_kept_step: int) -> int:
    """Remove records past the checkpoint we resume from, so no step appears twice; return the last step the
    file held before (0 for none).

    A run interrupted after its last checkpoint has logged steps that the resumed run will redo.
    The file is rewritten through a temporary file and os.replace, so a crash here leaves either the
    old or the new file, never half of one.
    """
    if not metrics_path.exists():
        return 0
    lines = metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept, last_step = [], 0
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a crash in the middle of a write leaves a torn last line
        last_step = max(last_step, record["step"])
        if record["step"] <= last_kept_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept == lines:
        return last_step
    tmp_path = metrics_path.with_name(metrics_path.name + ".tmp")
    with open(tmp_path, "w", encoding="utf-8") as tmp:
        tmp.writelines(kept)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp_path, metrics_path)
    return last_step


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars as Python numbers: JSON needs that, and W&B would log a tensor as a histogram."""
    return value.item() if hasattr(value, "item") else value


# Progress-bar fields: metric key, label, format.
_BAR_FIELDS = (("loss", "loss", ".4f"), ("lr", "lr", ".2e"), ("tokens_per_second", "tok/s", ",.0f"), ("val/loss", "val_loss", ".4f"))

_SUMMARY_LABELS = {
    "model_source": "model weights from",
    "parameters": "parameters",
    "trainable_parameters": "trainable parameters",
    "micro_batch_size": "micro batch (sequences per device)",
    "grad_accum": "gradient accumulation",
    "loss": "final train loss",
    "val/loss": "val loss",
    "val/ppl": "val perplexity",
    "tokens_per_second": "tokens/s (all devices)",
    "tokens_per_second_per_device": "tokens/s per device",
    "mfu": "MFU",
    "peak_mem_alloc_gib": "peak GPU memory allocated",
    "peak_mem_reserved_gib": "peak GPU memory reserved",
    "host_rss_gib": "host memory (RSS)",
    "load_peak_mem_alloc_gib": "peak GPU memory after loading",
    "weights_gib_per_rank": "weights held by each rank",
    "host_peak_gib_per_rank": "peak host memory of each rank",
    "fast_path": "fast path",
    "compile": "torch.compile",
    "wall_time_s": "wall time",
    "saved_to": "model saved to",
}


def _format_summary_value(key: str, value: Any) -> str:
    if isinstance(value, list):
        return " | ".join(_format_summary_value(key.removesuffix("_per_rank"), item) for item in value)
    if key == "mfu":
        return f"{value:.1%}"
    if key.endswith("_gib"):
        return f"{value:.2f} GiB"
    if key.startswith("tokens_per_second") or key.endswith("parameters"):
        return f"{value:,.0f}"
    if key == "wall_time_s":
        minutes, seconds = divmod(int(round(value)), 60)
        return f"{minutes // 60}h {minutes % 60:02d}m {seconds:02d}s"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class MetricsLogger:
    """Writes the run's metrics to metrics.jsonl, W&B (logger=wandb) and a console progress bar.

    Built on every rank so the loop needs no rank checks; only rank 0 writes. `close()` is safe to
    call twice and from the trainer's `finally`.
    """

    def __init__(self, cfg, rank: int, world_size: int, total_steps: int, start_step: int, resumed: bool):
        if cfg.logger.name not in ("none", "wandb"):
            raise ValueError(f"logger.name={cfg.logger.name!r}: expected 'none' or 'wandb'")
        self.is_writer = rank == 0
        self.world_size = world_size
        self._start_time = time.time()
        self._closed = False
        self._jsonl = None
        self._wandb_run = None
        self._bar = None
        self._bar_postfix: Dict[str, str] = {}
        self._wandb_has_steps_until = 0
        if not self.is_writer:
            return

        output_dir = Path(cfg.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = output_dir / METRICS_FILE
        self.summary_path = output_dir / SUMMARY_FILE
        self.summary_path.unlink(missing_ok=True)  # written again when this run finishes
        if resumed:
            logged_until = _drop_lines_after_step(self.metrics_path, last_kept_step=start_step)
            # W&B cannot take back the steps an interrupted run logged past its checkpoint (offline runs cannot
            # rewind), so they are not logged there again: W&B keeps each step once, from the first attempt, and
            # the redone steps give the same values (tests/faults/test_worker_killed.py). metrics.jsonl holds
            # the redone records.
            self._wandb_has_steps_until = logged_until if cfg.logger.name == "wandb" else 0
        # A fresh run in a reused output_dir starts a new file rather than mixing two runs' histories.
        self._jsonl = open(self.metrics_path, "a" if resumed else "w", encoding="utf-8")
        if cfg.logger.name == "wandb":
            self._wandb_run = open_wandb_run(cfg, resumed)
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        self.total_steps = total_steps

    def log(self, step: int, metrics: Dict[str, Any]) -> None:
        """Record metrics for an optimizer step. None values (e.g. mfu on CPU) are left out."""
        if not self.is_writer:
            return
        metrics = {key: _plain(value) for key, value in metrics.items() if value is not None}
        record = {"step": step, "time": time.time(), **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()  # one line at a time, so a crash keeps everything logged before it
        if step > self._wandb_has_steps_until:
            self._to_wandb("logging a step", lambda run: run.log(metrics, step=step))
        self._update_bar(step, metrics)
        if self._bar.disable:  # no bar (TQDM_DISABLE=1, e.g. a sweep's trial): a line per record instead
            print(f"step {step}/{self.total_steps} " + " ".join(
                f"{label} {format(metrics[key], fmt)}" for key, label, fmt in _BAR_FIELDS if key in metrics), flush=True)

    def _update_bar(self, step: int, metrics: Dict[str, Any]) -> None:
        # Eval records carry other keys: keep the last train values on the bar.
        for key, label, fmt in _BAR_FIELDS:
            if key in metrics:
                self._bar_postfix[label] = format(metrics[key], fmt)
        self._bar.set_postfix(self._bar_postfix, refresh=False)
        self._bar.update(max(0, step - self._bar.n))

    def summary(self, rows: Dict[str, Any]) -> None:
        """Print the end-of-run table and store the same rows in the W&B run summary.

        rows use the metric keys (loss, val/loss, val/ppl, tokens_per_second, mfu, peak_mem_*_gib or
        host_rss_gib) plus model, model_source, parameters, trainable_parameters, steps and saved_to; wall_time_s defaults to the time since this logger was built.
        None values are left out. Call close() afterwards.
        """
        if not self.is_writer:
            return
        rows = {key: _plain(value) for key, value in rows.items() if value is not None}
        rows.setdefault("wall_time_s", time.time() - self._start_time)
        self._bar.close()  # so the table is not drawn over by the bar
        table = Table(title="shardtune run summary")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in rows.items():
            table.add_row(_SUMMARY_LABELS.get(key, key), _format_summary_value(key, value))
        Console().print(table)
        write_json_atomic(self.summary_path, rows)
        self._to_wandb("storing the summary", lambda run: run.summary.update(rows))

    def close(self, exit_code: Optional[int] = None) -> None:
        """Finish W&B, the bar and the file. exit_code None: 1 if an exception is propagating, else 0."""
        if self._closed:
            return
        self._closed = True
        if exit_code is None:
            # Called from the trainer's `finally`: an exception in flight means the run failed, and
            # W&B should show it as failed rather than finished.
            exit_code = 0 if sys.exc_info()[0] is None else 1
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        self._to_wandb("finishing the run", lambda run: run.finish(exit_code=exit_code))
        if self._wandb_run is not None:
            # finish() can return before W&B's service has flushed an offline run to disk; shutting the
            # service down waits for it, so whoever reads the run directory next sees all of it.
            import wandb
            self._to_wandb("shutting down", lambda run: wandb.teardown())

    def _to_wandb(self, doing: str, call) -> None:
        """Hand something to W&B. Its service is a process of its own, which a job's SIGTERM (a preemption) stops
        along with the workers: then warn once and go on without W&B, rather than fail the run, whose checkpoint
        and metrics.jsonl matter more."""
        if self._wandb_run is None:
            return
        try:
            call(self._wandb_run)
        except Exception as error:  # wandb raises connection errors of several kinds
            log.warning("W&B stopped answering while %s (%s: %s); this run logs to metrics.jsonl only from now on",
                        doing, type(error).__name__, error)
            self._wandb_run = None
