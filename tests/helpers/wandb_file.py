"""Reads a W&B run's transaction log (``run-<id>.wandb``), as an offline run leaves it.

wandb >= 0.18 has no Python reader of its own for these files (its Go core writes and
syncs them) and ``wandb.Api`` needs a server, so the test reads the file directly: a
7-byte header (``:W&B``, a 2-byte magic, a version byte), then LevelDB's log format
(32 KiB blocks of chunks: crc32c (4) | length (2, LE) | type (1: full, 2: first,
3: middle, 4: last) | data; a block's tail shorter than a chunk header is padding). Each
record is one ``wandb.proto.wandb_internal_pb2.Record``, wandb's own schema.
"""

import json
import struct
from pathlib import Path

HEADER = 7
BLOCK = 32768
CHUNK_HEADER = 7


def records(path: Path) -> list:
    """Every Record of the file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B transaction log"
    out, pending, pos = [], b"", HEADER
    while pos + CHUNK_HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK_HEADER:  # padding at the end of a block
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def _kind(record) -> str:
    return record.WhichOneof("record_type")


def _items(items) -> dict:
    """{key: value} of a list of wandb items (``key`` or ``nested_key``, ``value_json``)."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def history(path: Path) -> list[dict]:
    """The logged rows: {"_step": step, key: value, ...} per ``run.log`` call."""
    return [_items(r.history.item) for r in records(path) if _kind(r) == "history"]


def run(path: Path):
    """The run record (``project``, ``display_name``, ``run_id``, ``config``...)."""
    return next(r.run for r in records(path) if _kind(r) == "run")


def config(path: Path) -> dict:
    """The run's config: its run record's, then its config records' updates."""
    merged = _items(run(path).config.update)
    for r in records(path):
        if _kind(r) == "config":
            merged.update(_items(r.config.update))
    return merged


def summary(path: Path) -> dict:
    """The run's summary as its summary records set it (later updates win)."""
    merged = {}
    for r in records(path):
        if _kind(r) == "summary":
            merged.update(_items(r.summary.update))
    return merged


def exit_code(path: Path) -> int | None:
    """The exit code of the run's exit record (None: the run was not finished)."""
    codes = [r.exit.exit_code for r in records(path) if _kind(r) == "exit"]
    return codes[-1] if codes else None
