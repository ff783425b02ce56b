"""Read what W&B wrote offline (a .wandb file), so tests can check the logged history."""
import json
import struct
from pathlib import Path


def read_wandb_records(path: Path):
    """Records of a .wandb file. It is a LevelDB-style log of wandb.proto Record messages after a
    7-byte header: 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, block_size, header_size = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    pos, pieces, records = header_size, [], []
    while pos + header_size <= len(data):
        if block_size - pos % block_size < header_size:  # too little room left: the block is padded
            pos += block_size - pos % block_size
            continue
        _crc, length, chunk_type = struct.unpack("<IHB", data[pos:pos + header_size])
        if chunk_type == 0:
            break
        pieces.append(data[pos + header_size:pos + header_size + length])
        pos += header_size + length
        if chunk_type in (1, 4):  # FULL or LAST chunk: a whole record is assembled
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(pieces))
            records.append(record)
            pieces = []
    return records


def item_key(item) -> str:
    # W&B stores a key either in `key` or as a one-element `nested_key` path.
    return item.key or "/".join(item.nested_key)


def history_and_summary(run_dir: Path):
    records = read_wandb_records(next(run_dir.glob("run-*.wandb")))
    history = [{item_key(item): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.HasField("history")]
    summary = {item_key(item): json.loads(item.value_json)
               for r in records if r.HasField("summary") for item in r.summary.update}
    exit_codes = [r.exit.exit_code for r in records if r.HasField("exit")]
    run = next(r.run for r in records if r.HasField("run"))
    return history, summary, exit_codes, run
