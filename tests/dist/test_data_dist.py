"""The data pipeline under torchrun: one build shared by the ranks, the same splits on 1 and 2 ranks, and
a packed chat run that trains."""
import hashlib
import json
import subprocess
import sys

import pytest
from conftest import read_metrics, run_shardtune, train_losses

from shardtune.config import load_resolved

WORKER = '''
import hashlib, json, sys
import torch.distributed as dist
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from shardtune.config import DataConfig, asset_path
from shardtune.data import load_or_build_in_workers

dist.init_process_group("gloo")
cfg = OmegaConf.structured(DataConfig(name="t", path=asset_path("data/tiny_instruct.jsonl"), test_fraction=0.1,
                                      cache_dir=sys.argv[1]))
data, path = load_or_build_in_workers(cfg, AutoTokenizer.from_pretrained(asset_path("tiny-tokenizer")), 64, 3)
digest = {name: hashlib.sha256(json.dumps(list(data.split(name)["input_ids"])).encode()).hexdigest()
          for name in ("train", "validation", "test")}
with open(f"{sys.argv[2]}/rank{dist.get_rank()}.json", "w") as f:
    json.dump({"digest": digest, "path": str(path)}, f)
dist.destroy_process_group()
'''


def digests_of(prepared) -> dict:
    return {name: hashlib.sha256(json.dumps(list(prepared.split(name)["input_ids"])).encode()).hexdigest()
            for name in ("train", "validation", "test")}


@pytest.mark.fast
def test_ranks_share_one_build_with_the_single_process_splits(tmp_path):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from shardtune.config import DataConfig, asset_path
    from shardtune.data import build

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cache = tmp_path / "cache"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    str(script), str(cache), str(tmp_path)], check=True, capture_output=True, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert [p.name for p in cache.iterdir()] == [ranks[0]["path"].rsplit("/", 1)[-1]]  # built once, no debris
    cfg = OmegaConf.structured(DataConfig(name="t", path=asset_path("data/tiny_instruct.jsonl"), test_fraction=0.1))
    one_process = build(cfg, AutoTokenizer.from_pretrained(asset_path("tiny-tokenizer")), 64, 3)
    assert ranks[0]["digest"] == digests_of(one_process)


def test_packed_chat_run_trains_on_two_ranks(tmp_path, fast_overrides):
    conversations = [{"messages": [{"role": "user", "content": f"Reverse {word}"},
                                   {"role": "assistant", "content": word[::-1]}]}
                     for word in (f"{a}{b}{c}" for a in "abcdefgh" for b in "ijklmnop" for c in "qrstu")]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in conversations))
    run_dir = tmp_path / "run"
    result = run_shardtune("train", *fast_overrides, "method=lora", "strategy=fsdp", "data.format=chat",
                           f"data.path={data}", "data.packing=true", "train.seq_len=128",
                           f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={run_dir}")
    assert "packed_train_rows" in result.stderr and "packing_efficiency" in result.stderr
    # The launcher tokenized the data once and recorded the entry; the workers loaded that entry.
    entry = load_resolved(run_dir / "config.yaml").data.cache_entry
    launcher_log, worker_log = result.stdout, result.stderr  # Hydra logs to stdout, the workers to stderr
    assert f"data prepared in {entry}:" in launcher_log and f"data from {entry}:" in worker_log
    losses = train_losses(run_dir)
    assert len(losses) == 8 and losses[8] < losses[1] - 0.3
    assert read_metrics(run_dir)[-1]["val/loss"] > 0
