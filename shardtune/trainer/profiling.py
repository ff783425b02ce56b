"""train.profile_steps: a torch.profiler record of a few optimizer steps, to see where a step's time goes (which
kernels, how much is communication or waiting on the host). Each rank writes a Chrome trace (open it in
https://ui.perfetto.dev) and a table of its most expensive operators into <output_dir>/profile/; on a GPU also a
record of the same steps' allocations (rank<R>-memory.pickle: https://pytorch.org/memory_viz, or
benchmarks/memory_peak.py), to see what is alive at the peak.

The allocation record is left out where compiled blocks are checkpointed: since PyTorch 2.11 recording allocations
while a compiled function runs inside activation checkpointing ends the process ("SystemError: <built-in method apply
of FunctionMeta> returned NULL", pytorch/pytorch#179536; an 8B LoRA run died of it, 2026-12-07)."""
import logging
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

log = logging.getLogger(__name__)


class StepProfiler:
    def __init__(self, steps, output_dir, rank: int, device: torch.device, compiled_and_checkpointed: bool):
        self.first, self.last = steps if steps else (0, -1)
        self.directory = Path(output_dir, "profile")
        self.rank, self.device = rank, device
        # The allocation record: on a GPU, except where compiled blocks are checkpointed (the module's doc says why).
        self.record_memory = device.type == "cuda" and not compiled_and_checkpointed
        self.profiler = None
        if steps and device.type == "cuda" and not self.record_memory and rank == 0:
            log.warning("train.profile_steps: no allocation record (rank<R>-memory.pickle) with compiled blocks under "
                        "activation checkpointing: PyTorch ends the process when both run (pytorch/pytorch#179536)")

    def step_started(self, step: int) -> None:
        """`step`: the number of the optimizer step about to run (1-based)."""
        if step == self.first:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.profiler = profile(activities=activities)
            self.profiler.start()
            if self.record_memory:
                torch.cuda.memory._record_memory_history(stacks="python", max_entries=1_000_000)

    def step_done(self, step: int) -> None:
        if step != self.last or self.profiler is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # the kernels of the last step belong in the record
        self.profiler.stop()
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.record_memory:
            torch.cuda.memory._dump_snapshot(str(self.directory / f"rank{self.rank}-memory.pickle"))
            torch.cuda.memory._record_memory_history(enabled=None)
        self.profiler.export_chrome_trace(str(self.directory / f"rank{self.rank}.json"))
        sort_by = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=sort_by, row_limit=40, max_name_column_width=80)
        (self.directory / f"rank{self.rank}-top.txt").write_text(f"steps {self.first}-{self.last}\n{table}\n")
        self.profiler = None
        if self.rank == 0:
            log.info("profile of steps %d-%d written to %s", self.first, self.last, self.directory)
