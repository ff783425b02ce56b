"""The trainer inside each torchrun worker: one loop for every method and strategy.

Lifecycle: set up (process group, data, model, strategy, resume) -> train (accumulate, step, log,
evaluate, checkpoint) -> finish (final evaluation, export to final/, summary) -> close, on success and
on error alike.
"""
import gc
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..data import Collator, ShardedBatches, load_or_build_in_workers
from ..data.batches import DataPosition
from ..data.pipeline import format_report
from ..config import weights_origin
from ..data.tokenize import IGNORE_INDEX
from ..data.tokenizer import build_tokenizer
from ..precision import DTYPES
from ..run_dir import FINAL_DIR, checkpoint_dir
from ..strategy_registry import strategy_spec
from .. import attention
from . import activations, checkpoint, collectives, fast_path, fp8, micro_batch_trial, nonfinite, preemption, pruning
from .profiling import StepProfiler
from .metrics import (GIB, MetricsLogger, ThroughputMeter, flops_per_token, host_peak_gib, memory_stats, parameter_gib,
                      peak_flops)
from .model import count_parameters, decoder_layers, model_source
from .optim import make_optimizer_factory, make_scheduler_factory
from .strategies import make_strategy

log = logging.getLogger("shardtune")


def init_distributed(launcher) -> torch.device:
    """Join the process group torchrun set up: NCCL on GPUs, gloo on CPUs; with set-up's long timeout
    (trainer/collectives.py)."""
    use_cuda = launcher.device == "cuda" or (launcher.device == "auto" and torch.cuda.is_available())
    timeout = collectives.init_timeout(launcher)
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=timeout)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout)
    return device


class Trainer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.device = init_distributed(cfg.launcher)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.watch = collectives.CollectiveWatch(cfg.launcher, self.rank, self.world_size)
        self.dtype = DTYPES[cfg.train.precision]
        self.strategy = make_strategy(cfg, self.device, self.dtype)
        self.metrics = None
        # Early, so a signal during set-up counts too.
        self.stop_request = preemption.StopRequest(cfg.train.grace_period_s, self.rank)
        self.nonfinite = nonfinite.NonfiniteSteps(cfg.train.skip_nonfinite_steps, self.rank)
        self.step = 0  # optimizer steps done
        self.last_train_loss = None
        self.data_position = DataPosition()  # the whole run's place in the data, for exact resume on any world size
        self.frames_at_first_step = None  # torch.compile's count of compiled frames once the first step has run
        self.started = time.time()

    def run(self) -> None:
        try:
            self.setup()
            trained = self.train()
            self.checkpointer.wait()  # the end of the run waits for a background save to complete
            if trained:
                self.finish()
        except RuntimeError as error:
            timed_out = self.watch.explain(error)
            if timed_out is None:
                raise
            log.error("%s", timed_out)  # with the time it happened, which the traceback lacks
            raise timed_out from error
        finally:
            self.close()

    # -- set-up ----------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self.tokenizer = build_tokenizer(cfg.model)
        self.build_data()
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # torchrun's, after a worker failed
        resume_from = checkpoint.find_resume_checkpoint(cfg.output_dir, cfg.resume, restarted=restarts > 0)
        if resume_from is not None:  # before the strategy builds anything: DeepSpeed may convert the checkpoint
            self.strategy.prepare_resume(resume_from, checkpoint.saved_world_size(resume_from, self.world_size))
        self.build_model(model_source(cfg, self.dtype))
        if micro_batch_trial.runs_trial(cfg, self.device, strategy_spec(cfg.strategy).kind):
            self.confirm_micro_batch()  # before the checkpoint's optimizer states: the trial stands in for them
        if resume_from is not None:
            state = checkpoint.load_checkpoint(self.strategy, resume_from)
            self.step = state["step"]
            self.data_position = checkpoint.data_position(state, len(self.data.train), cfg.train.micro_batch_size,
                                                          self.world_size)
            if self.rank == 0:
                checkpoint.report_layout_change(state, cfg.train, self.world_size, self.data_position)
        self.checkpointer = checkpoint.Checkpointer(self.strategy, cfg.output_dir, cfg.train.keep_checkpoints,
                                                    cfg.train.async_checkpoint, self.watch,
                                                    cfg.launcher.setup_timeout_s)
        # A restart continues the metrics and the W&B run even from step 0: they are this run's.
        self.metrics = MetricsLogger(cfg, self.rank, self.world_size, self.total_steps, self.step,
                                     resumed=resume_from is not None or restarts > 0)
        # A sweep's trial with a pruner: rank 0 reports validation losses to the sweep's Optuna study.
        self.prunable = cfg.sweep.optuna_trial is not None and cfg.sweep.pruner != "none"
        self.pruning = pruning.TrialPruning(cfg.sweep) if self.prunable and self.rank == 0 else None
        self.throughput = ThroughputMeter(
            flops_per_token(self.model_config, cfg.train.seq_len, self.num_params, self.num_trainable_params),
            peak_flops(self.device), self.world_size, self.device)
        if self.rank == 0:
            preemption.clear_marker(cfg.output_dir)  # left by the run this one continues
            self.log_start(resume_from, restarts)

    def build_model(self, source: str) -> None:
        """The strategy's model with the fast path's parts, wrapped with its optimizer and schedule."""
        cfg = self.cfg
        # Seeded right before building, after anything one rank does alone: every rank must create the
        # same adapter weights, since FSDP shards each rank's own copy instead of broadcasting rank 0's.
        torch.manual_seed(cfg.train.seed)
        model = self.strategy.build_model(source)
        self.model_config = model.config
        self.fast_path = fast_path.choose(cfg.train, cfg.method, self.device.type, model.config.model_type)
        if self.fast_path.fused_loss:
            self.strategy.expose_head_to_fused_loss(model)
        fast_path.apply(model, self.fast_path, decoder_layers, self.strategy.compile_block_hooks)
        self.num_params, self.num_trainable_params = count_parameters(model)
        optimizer = strategy_spec(cfg.strategy).optimizer(cfg.strategy)
        self.strategy.wrap(model, make_optimizer_factory(cfg.optim, self.device, optimizer),
                           make_scheduler_factory(cfg.optim, self.total_steps))
        self.weights_gib = parameter_gib(self.strategy.model) + self.strategy.weight_copies_bytes() / GIB
        # The loading peak, kept apart from training's: sharded loading must stay below the steady state.
        self.load_memory = memory_stats(self.device) if self.device.type == "cuda" else {}

    def log_start(self, resume_from, restarts: int) -> None:
        """Rank 0's first lines: what trains, from where, and which parts of the fast path are on."""
        cfg = self.cfg
        where = f"resuming from {resume_from} at step {self.step}" if resume_from else "starting"
        if restarts:
            where = f"restart {restarts} of the workers: {where}"
        log.info("%s: model %s (%s), %s params (%s trainable), %d steps, world size %d, %.3g GiB of weights "
                 "on rank 0", where, cfg.model.name, weights_origin(cfg.model), f"{self.num_params:,}",
                 f"{self.num_trainable_params:,}", self.total_steps, self.world_size, self.weights_gib)
        log.info("fast path: %s; %s; %s; %s", self.fast_path.describe(),
                 fp8.describe(self.strategy.fp8_recipe, self.strategy.fp8_why_not),
                 activations.describe(cfg.train, self.device.type, self.fast_path.compile_blocks),
                 attention.describe(cfg, self.device.type))

    def build_data(self) -> None:
        cfg = self.cfg
        self.data, path = load_or_build_in_workers(cfg.data, self.tokenizer, cfg.train.seq_len, cfg.train.seed)
        if self.rank == 0:
            log.info("data from %s: %s", path, format_report(self.data.report))
        self.batch_data()
        steps_per_epoch = len(self.train_batches) // cfg.train.grad_accum
        if steps_per_epoch == 0:
            raise ValueError(f"train.grad_accum: {cfg.train.grad_accum} micro-batches per step, but an epoch has "
                             f"only {len(self.train_batches)} per rank")
        t = cfg.train
        self.total_steps = t.max_steps if t.max_steps is not None else math.ceil(t.epochs * steps_per_epoch)

    def batch_data(self) -> None:
        """Micro-batches of train.micro_batch_size rows of the training and validation splits."""
        cfg, collator = self.cfg, Collator(self.tokenizer.pad_token_id)
        self.train_batches = ShardedBatches(self.data.train, cfg.train.micro_batch_size, self.rank, self.world_size,
                                            cfg.train.seed, collator, shuffle=True)
        # Validation takes smaller micro-batches where the split is too small for full ones on every rank.
        val_rows = self.data.validation
        val_micro_batch = min(cfg.train.micro_batch_size, len(val_rows) // self.world_size)
        self.val_batches = ShardedBatches(val_rows, val_micro_batch, self.rank, self.world_size, cfg.train.seed,
                                          collator, shuffle=False, split="validation") if val_micro_batch else None

    def confirm_micro_batch(self) -> None:
        """The trial step (micro_batch_trial.py): on running out of memory, a smaller micro batch and more accumulation,
        over the same rows per step; the number of steps and the learning-rate schedule stay."""
        train = self.cfg.train
        rows_per_step = train.micro_batch_size * train.grad_accum
        size = micro_batch_trial.confirm_on_gpu(self.strategy, train, self.device)
        if self.rank == 0:
            log.info("micro batch trial: %d fits on every rank (grad_accum %d)", size, rows_per_step // size)
        if size != train.micro_batch_size:
            train.micro_batch_size, train.grad_accum = size, rows_per_step // size
            self.batch_data()

    # -- the loop --------------------------------------------------------------------------
    def train(self) -> bool:
        """Run the steps; False when stopped early by SIGUSR1 (after saving a checkpoint)."""
        cfg, strategy = self.cfg, self.strategy
        stream = self.train_batches.stream(self.data_position)
        loss_sum = torch.zeros((), device=self.device)  # token losses since the last log, this rank
        label_tokens_since_log = 0
        strategy.model.train()
        first_step = self.step + 1  # of this process: a resumed run compiles again
        profiler = StepProfiler(cfg.train.profile_steps, cfg.output_dir, self.rank, self.device,
                                compiled_and_checkpointed=self.fast_path.compile_blocks
                                and cfg.train.activation_checkpointing)
        while self.step < self.total_steps:
            self.watch.step = self.step + 1
            self.throughput.step_started()
            profiler.step_started(self.step + 1)
            micro_batches = []
            for _ in range(cfg.train.grad_accum):
                batch, self.data_position = next(stream)
                micro_batches.append(batch)
            # Normalise by the label tokens of the whole step on all ranks, so every token weighs the
            # same whatever the padding, the accumulation and the sharding (one all-reduce per step).
            # The same all-reduce tells every rank whether any rank was asked to stop (SIGUSR1, SIGTERM), so
            # all of them stop after this step, and whether every rank's background checkpoint is written.
            counts = torch.tensor([[int((b["labels"][:, 1:] != IGNORE_INDEX).sum()), int(b.pop("num_tokens"))]
                                   for b in micro_batches]).sum(0).tolist()
            counts = torch.tensor([*counts, *self.stop_request.flags(), *self.checkpointer.flags()],
                                  device=self.device)
            dist.all_reduce(counts)
            label_tokens, input_tokens, usr1_requests, term_requests, saves_written = counts.tolist()
            if saves_written == self.world_size:
                self.checkpointer.wait()  # done on every rank: marks it complete, waits for nothing
            # Each rank's gradients are averaged over ranks, hence the share of the tokens per rank.
            tokens_per_rank = label_tokens / self.world_size
            lr = strategy.optimizer.param_groups[0]["lr"]
            step_loss = torch.zeros((), device=self.device)  # this step's token losses, this rank
            for index, batch in enumerate(micro_batches):
                last = index == len(micro_batches) - 1
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                # Gradients are all-reduced only on the last micro-batch; earlier ones accumulate locally.
                with strategy.gradient_sync(last):
                    with strategy.autocast():
                        loss = strategy.model(**batch, num_items_in_batch=tokens_per_rank).loss
                    loss = self.nonfinite.inject(loss, self.step + 1)
                    strategy.backward(loss)
                step_loss += loss.detach().float() * tokens_per_rank
            # The gradient norm is global (computed over all ranks' synchronised gradients), so a NaN or inf loss on
            # any one rank makes it non-finite on every rank, and all of them skip the step or stop together.
            grad_norm = strategy.step(skip_nonfinite=self.nonfinite.may_skip())
            self.step += 1
            skipped = self.nonfinite.check(self.step, grad_norm, self.dtype)  # raises once no skip is left
            if skipped:  # its loss stays out of the logged mean, which it would make NaN
                self.metrics.log(self.step, {"skipped_nonfinite": self.nonfinite.skipped, "lr": lr})
            else:
                loss_sum += step_loss
                label_tokens_since_log += label_tokens
            self.throughput.step_done(input_tokens)
            profiler.step_done(self.step)
            if self.step == first_step:
                self.watch.start_training()  # every rank has set up and compiled: collectives now keep in step
            if self.step == first_step and self.fast_path.compile_blocks:
                self.frames_at_first_step = fast_path.frames_compiled()
                if self.rank == 0:
                    log.info("compile: the first step took %.1f s with compilation; %s",
                             self.throughput.totals()["step_time_s"], fast_path.compile_report())
            if not skipped and (self.step % cfg.train.log_interval == 0 or self.step == self.total_steps):
                dist.all_reduce(loss_sum)
                self.last_train_loss = loss_sum.item() / max(1, label_tokens_since_log)
                if not math.isfinite(self.last_train_loss):  # every rank sees the all-reduced loss and stops
                    raise FloatingPointError(f"loss is {self.last_train_loss} at step {self.step}: training diverged "
                                             f"(optim.lr={cfg.optim.lr} too high?)")
                self.metrics.log(self.step, {"loss": self.last_train_loss, "lr": lr,
                                             "grad_norm": grad_norm, **self.throughput.rates(),
                                             **self.peak_memory()})
                loss_sum.zero_()
                label_tokens_since_log = 0
            if cfg.train.eval_interval and self.step % cfg.train.eval_interval == 0 and self.step < self.total_steps:
                if self.pruned(self.evaluate()):
                    return False
            saved = cfg.train.save_interval and self.step % cfg.train.save_interval == 0
            if saved:
                self.save_checkpoint()
            if (usr1_requests or term_requests) and self.step < self.total_steps:
                self.stop_early("SIGTERM" if term_requests else "SIGUSR1", already_saved=saved)
                return False
        return True

    def stop_early(self, signal_name: str, already_saved: bool) -> None:
        """A signal reached some rank: save a complete checkpoint (collective) and leave the marker that
        tells Slurm's batch script to requeue; the requeued run resumes here with resume=auto."""
        path = checkpoint_dir(self.cfg.output_dir, self.step)
        if not already_saved:
            path = self.save_checkpoint()
        self.checkpointer.wait()  # complete before the marker names it and the grace period ends
        self.stop_request.saved()
        if self.rank == 0:
            preemption.write_marker(self.cfg.output_dir, path, signal_name)
            log.info("stopping at step %d on %s: checkpoint %s saved; resume=auto continues from it",
                     self.step, signal_name, path)

    def pruned(self, results: dict) -> bool:
        """Whether the sweep's pruner stops this trial after this evaluation (rank 0 asks; all ranks follow)."""
        if not self.prunable or not results:
            return False
        verdict = torch.tensor([int(self.pruning.should_prune(self.step, results["val/loss"]))
                                if self.pruning else 0], device=self.device)
        dist.all_reduce(verdict)
        if verdict.item() and self.rank == 0:
            pruning.write_marker(self.cfg.output_dir, self.step, results["val/loss"])
            log.info("pruned at step %d: validation loss %.4f is worse than the sweep's %s pruner allows",
                     self.step, results["val/loss"], self.cfg.sweep.pruner)
        return bool(verdict.item())

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Token-weighted validation loss and perplexity over the whole validation split (all ranks)."""
        if self.val_batches is None:
            return {}
        model = self.strategy.model
        model.eval()
        totals = torch.zeros(2, device=self.device, dtype=torch.float64)
        for index, batch in enumerate(self.val_batches.iterate(0)):
            if self.cfg.train.eval_max_batches is not None and index >= self.cfg.train.eval_max_batches:
                break
            batch = {k: v.to(self.device) for k, v in batch.items() if k != "num_tokens"}
            with self.strategy.autocast():
                loss_sum = model(**batch, num_items_in_batch=1, **fast_path.loss_kwargs(self.fast_path)).loss  # a sum
            totals += torch.stack([loss_sum.double(), (batch["labels"][:, 1:] != IGNORE_INDEX).sum().double()])
        dist.all_reduce(totals)
        model.train()
        val_loss = (totals[0] / totals[1].clamp(min=1)).item()
        results = {"val/loss": val_loss, "val/ppl": math.exp(min(val_loss, 50))}
        self.metrics.log(self.step, results)
        return results

    def save_checkpoint(self) -> Path:
        train, position = self.cfg.train, self.data_position
        state = {"step": self.step, "data_epoch": position.epoch, "data_rows": position.rows,
                 "micro_batch_size": train.micro_batch_size, "grad_accum": train.grad_accum,
                 "world_size": self.world_size}
        return self.checkpointer.save(self.step, state)

    def peak_memory(self) -> dict:
        """Memory statistics of the rank that uses the most (ranks can differ: uneven shards, rank 0's
        extra work), and what each rank holds. Collective."""
        stats = {**memory_stats(self.device), **{f"load_{key}": value for key, value in self.load_memory.items()
                                                 if key == "peak_mem_alloc_gib"}}
        values = torch.tensor(list(stats.values()), device=self.device, dtype=torch.float64)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        per_rank = torch.tensor([self.weights_gib, host_peak_gib()], device=self.device, dtype=torch.float64)
        gathered = [torch.zeros_like(per_rank) for _ in range(self.world_size)]
        dist.all_gather(gathered, per_rank)
        weights, host_peaks = zip(*(rank.tolist() for rank in gathered))
        return {**dict(zip(stats, values.tolist())), "weights_gib_per_rank": list(weights),
                "host_peak_gib_per_rank": list(host_peaks)}

    # -- the end -----------------------------------------------------------------------------
    def finish(self) -> None:
        results = self.evaluate()
        final_dir = self.export() if self.cfg.train.save_final else None
        rates = self.throughput.totals()
        self.metrics.summary({
            "model": self.cfg.model.name,
            "model_source": weights_origin(self.cfg.model),
            "parameters": self.num_params,
            "trainable_parameters": self.num_trainable_params,
            "steps": self.step,
            "micro_batch_size": self.cfg.train.micro_batch_size,
            "grad_accum": self.cfg.train.grad_accum,
            "loss": self.last_train_loss,
            **results,
            "tokens_per_second": rates.get("tokens_per_second"),
            "tokens_per_second_per_device": rates.get("tokens_per_second_per_device"),
            "mfu": rates.get("mfu"),
            "fast_path": self.fast_path.describe(),
            "fp8": self.strategy.fp8_recipe,
            **({"compile": fast_path.compile_report(self.frames_at_first_step)} if self.fast_path.compile_blocks
               else {}),
            **self.peak_memory(),
            "wall_time_s": time.time() - self.started,
            "saved_to": str(final_dir) if final_dir else "not saved (train.save_final=false)",
        })

    def export(self) -> Path:
        """Write final/: a peft adapter directory (LoRA, QLoRA) or a transformers model (full)."""
        with self.watch.alone():  # rank 0 writes while the others wait
            return self._export()

    def _export(self) -> Path:
        state = self.strategy.gather_state_dict()  # collective
        final_dir = Path(self.cfg.output_dir, FINAL_DIR)
        if self.rank == 0:
            staging = final_dir.with_name("final.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            self.strategy.module.save_pretrained(staging, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(staging)
            shutil.rmtree(final_dir, ignore_errors=True)
            os.replace(staging, final_dir)  # readers never see a half-written final/
        dist.barrier()
        return final_dir

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        # Free the wrapped model before the process group: DDP's reducer holds the group, and a gloo group
        # destroyed from the reducer's destructor at interpreter exit can deadlock its own worker threads. The
        # checkpointer holds the strategy too (a 4-rank DDP run hung at exit while it did).
        self.strategy = self.checkpointer = None
        gc.collect()
        # Not after a collective timed out: tearing the group down would wait for the rank that stopped.
        if dist.is_initialized() and not self.watch.failed:
            dist.destroy_process_group()
