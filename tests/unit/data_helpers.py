"""Small data files and data configs that the data tests write."""
import json

from omegaconf import OmegaConf

from shardtune.config import DataConfig


def write_jsonl(path, rows):
    """rows as JSON lines (a str row is written as it is, for malformed lines); the path."""
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def data_cfg(path, **fields):
    """The data config of one file, with no validation split unless `fields` sets one."""
    return OmegaConf.structured(DataConfig(name="test", path=str(path), **{"val_fraction": 0.0, **fields}))
