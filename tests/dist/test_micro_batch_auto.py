"""train.micro_batch_size=auto through the real command on CPU workers: the launcher resolves it before the workers
start, and the workers, the run's config and its summary all see the number."""
from conftest import FAST, run_shardtune
from omegaconf import OmegaConf

from shardtune.launcher.micro_batch import CPU_MAX_MICRO_BATCH
from shardtune.run_dir import read_metrics, read_summary


def test_auto_on_cpu_workers_trains_with_the_number_it_chose(tmp_path):
    output_dir = tmp_path / "run"
    run_shardtune("train", f"output_dir={output_dir}", *FAST, "train.micro_batch_size=auto", "train.max_steps=2",
                  "train.save_final=false")
    launcher_log = (output_dir / "launcher.log").read_text()
    assert launcher_log.count(f"micro batch: auto -> {CPU_MAX_MICRO_BATCH} (CPU workers: no GPU memory to fill") == 1
    written = OmegaConf.load(output_dir / "config.yaml").train
    assert written.micro_batch_size == CPU_MAX_MICRO_BATCH and not written.micro_batch_trial
    summary = read_summary(output_dir)
    assert summary["steps"] == 2
    assert summary["micro_batch_size"] == CPU_MAX_MICRO_BATCH and summary["grad_accum"] == 1
    assert [row["step"] for row in read_metrics(output_dir) if "loss" in row] == [1, 2]
