"""Tokenize once: prepared splits are cached on disk under a key of everything that shapes them.

The key covers the data settings (formats, columns, masking, on_bad_row, ...), each local file's path, size and
modification time (or the hub name, subset, split and revision), the tokenizer (vocabulary, special tokens, chat
template) and the chat template in effect, seq_len and the seed, so changing any of them builds a new entry. An
entry is written to a temporary directory and renamed into place with a COMPLETE marker: readers never see half of
one, and of two concurrent writers (one per node on a shared filesystem) one wins and the other's copy is discarded.

In a run, the launcher builds the entry before starting workers (errors surface there) and records it in
the run's config (data.cache_entry); workers load it. A worker that finds no entry (a node without the shared
filesystem) builds it: global rank 0 first, then local rank 0 of any node still without it, while the other
ranks wait.
"""
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Tuple

from datasets import Dataset, load_from_disk
from omegaconf import OmegaConf

from ..cluster.shared_fs import write_once_per_filesystem
from ..run_dir import COMPLETE_MARKER, is_complete, write_directory_atomically
from .formats import chat_template_for
from .pipeline import PreparedData, build, sources
from .sources import SPLITS, looks_local

log = logging.getLogger("shardtune")
CACHE_VERSION = 4  # bump when the prepared format changes (4: too_long checks and counts, the formats' new settings)
EMPTY_SPLIT = "empty-split.json"
# Settings that do not change the prepared rows.
NOT_IN_KEY = ("name", "cache_dir", "cache_entry", "num_proc")


def cache_root(data_cfg) -> Path:
    if data_cfg.cache_dir:
        return Path(os.path.expanduser(data_cfg.cache_dir))
    return Path(os.environ.get("SHARDTUNE_DATA_CACHE", Path.home() / ".cache" / "shardtune" / "data"))


def _files_of(path: str) -> list:
    root = Path(os.path.expanduser(path))
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()]


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    parts = [type(tokenizer).__name__, vocabulary, json.dumps(tokenizer.special_tokens_map, sort_keys=True),
             str(getattr(tokenizer, "chat_template", None))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def cache_key(data_cfg, tokenizer, seq_len: int, seed: int) -> Tuple[str, dict]:
    """(hex key, the settings it was made from; written next to the entry for people to read)."""
    settings = {k: v for k, v in OmegaConf.to_container(data_cfg, resolve=True).items() if k not in NOT_IN_KEY}
    files = {s["path"]: _files_of(s["path"]) for s in sources(data_cfg) if s["path"] and looks_local(s["path"])}
    material = {"version": CACHE_VERSION, "data": settings, "files": files, "seq_len": seq_len, "seed": seed,
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "chat_template": chat_template_for(data_cfg, tokenizer)}  # the built-in one where it serves
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]
    return digest, material


def entry_path(data_cfg, tokenizer, seq_len: int, seed: int) -> Path:
    return cache_root(data_cfg) / cache_key(data_cfg, tokenizer, seq_len, seed)[0]


def _save_split(split: Dataset, path: Path) -> None:
    if len(split):
        split.save_to_disk(str(path))
    else:  # datasets writes no table for zero rows and then cannot load it back: keep the columns only
        path.mkdir()
        (path / EMPTY_SPLIT).write_text(json.dumps(list(split.column_names)))


def _load_split(path: Path) -> Dataset:
    if (path / EMPTY_SPLIT).exists():
        return Dataset.from_dict({name: [] for name in json.loads((path / EMPTY_SPLIT).read_text())})
    return load_from_disk(str(path))


def load_entry(path: Path) -> PreparedData:
    splits = [_load_split(path / name) for name in SPLITS]
    return PreparedData(*splits, report=json.loads((path / "report.json").read_text()))


def write_entry(path: Path, prepared: PreparedData, material: dict) -> None:
    def fill(staging: Path) -> None:
        for name in SPLITS:
            _save_split(prepared.split(name), staging / name)
        (staging / "report.json").write_text(json.dumps(prepared.report, indent=1))
        (staging / "key.json").write_text(json.dumps(material, indent=1))
        (staging / COMPLETE_MARKER).touch()

    write_directory_atomically(path, fill, lambda: is_complete(path))  # of two writers, the first one's stays


def load_or_build(data_cfg, tokenizer, seq_len: int, seed: int, rebuild: bool = False) -> Tuple[PreparedData, Path, bool]:
    """(the tokenized splits, their cache entry, whether it was already there)."""
    key, material = cache_key(data_cfg, tokenizer, seq_len, seed)
    path = cache_root(data_cfg) / key
    if (rebuild or not is_complete(path)) and path.exists():
        shutil.rmtree(path)  # entries are renamed into place complete, so one without its marker is debris
    if is_complete(path):
        return load_entry(path), path, True
    prepared = build(data_cfg, tokenizer, seq_len, seed)
    write_entry(path, prepared, material)
    return prepared, path, False


def load_or_build_in_workers(data_cfg, tokenizer, seq_len: int, seed: int) -> Tuple[PreparedData, Path]:
    """Collective: every rank calls it and gets the same splits, built at most once per filesystem. The entry is
    the one the launcher recorded in data.cache_entry, or (no launcher) the one the key names."""
    path = Path(data_cfg.cache_entry) if data_cfg.cache_entry else entry_path(data_cfg, tokenizer, seq_len, seed)

    def build_here() -> None:  # a node that does not see the entry (its own disk) builds its copy at the same path
        write_entry(path, build(data_cfg, tokenizer, seq_len, seed), cache_key(data_cfg, tokenizer, seq_len, seed)[1])

    write_once_per_filesystem(lambda: is_complete(path), build_here)
    return load_entry(path), path
