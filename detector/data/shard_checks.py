"""Finding the damaged shard of a packed dataset (`detector.data.tfrecord`).

TensorFlow's TFRecord reader says ``truncated record at 4064`` or ``corrupted record at
2044`` without the file. Here:

- `check_sizes` compares each shard's size with the one the index recorded at packing
  time (a ``stat`` per shard: a start still reads only the index), so a cut or changed
  shard is refused by name before anything reads it;
- `read_shard` iterates one shard, turning TensorFlow's ``DataLossError`` into a
  ValueError naming it;
- `damaged_shard` finds, after a ``DataLossError`` from a stream over many shards, which
  one it was: each shard's framing is walked (12-byte headers and seeks, no data read),
  then the shards with a record at the reported offset are read through.
"""

import os
import re
import struct
from collections.abc import Iterator, Sequence

_HEADER = 12  # uint64 length, uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the data
_OFFSET = re.compile(r"(?:truncated|corrupted) record at (\d+)")
REPACK = "pack the dataset again"


def check_sizes(files: Sequence[str], sizes: Sequence[int] | None, index_path: str) -> None:
    """ValueError naming the first shard whose size is not the packed one (`sizes` from
    the index; a pack without them is not checked)."""
    for path, packed in zip(files, sizes or (), strict=False):
        size = os.path.getsize(path)
        if size != packed:
            cut = "truncated" if size < packed else "changed"
            raise ValueError(
                f"{path}: TFRecord shard {cut}: {size} bytes, packed as {packed} "
                f"(index {index_path}); {REPACK}"
            )


def read_shard(path: str, parse) -> Iterator:
    """The numpy values of `parse` applied to each serialized record of the shard at
    `path`; a damaged record is a ValueError naming the shard."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset([path]).map(parse)
    try:
        yield from ds.as_numpy_iterator()
    except tf.errors.DataLossError as error:
        raise ValueError(f"{path}: damaged TFRecord shard ({_detail(error)}); {REPACK}") from None


def record_spans(path: str) -> tuple[list[tuple[int, int]], str]:
    """(start, end) bytes of each whole record of the file, read from its headers alone,
    and "" or what cuts it short (a header or record running past the end of the file)."""
    size, spans = os.path.getsize(path), []
    with open(path, "rb") as f:
        start = 0
        while start < size:
            header = f.read(_HEADER)
            if len(header) < _HEADER:
                return spans, f"truncated record at byte {start} (header cut)"
            end = start + _HEADER + struct.unpack("<Q", header[:8])[0] + _FOOTER
            if end > size:
                return spans, f"truncated record at byte {start} (ends past byte {size})"
            spans.append((start, end))
            f.seek(end)
            start = end
    return spans, ""


def damaged_shard(files: Sequence[str], counts: Sequence[int] | None, message: str) -> str:
    """The shard a ``DataLossError`` reading `files` came from and its damage, as
    ``PATH: ...``; "" when none is found (`message` is the error's text; `counts` the
    records per file from the index, if known)."""
    spans = {}
    for i, path in enumerate(files):
        try:
            spans[path], cut = record_spans(path)
        except OSError as error:
            return f"{path}: cannot read the TFRecord shard ({error.strerror or error})"
        if cut:
            return f"{path}: {cut}"
        if counts is not None and i < len(counts) and len(spans[path]) != counts[i]:
            return f"{path}: {len(spans[path])} records, the index says {counts[i]}"
    found = _OFFSET.search(message)
    offset = int(found.group(1)) if found else None
    for path in files:
        if offset is None or any(a <= offset < b for a, b in spans[path]):
            try:
                for _ in read_shard(path, lambda s: 0):
                    pass
            except ValueError as error:
                return str(error).removesuffix(f"; {REPACK}")
    return ""


def _detail(error) -> str:
    """The reader's own words (``corrupted record at 2044``), without the graph's noise."""
    found = _OFFSET.search(str(getattr(error, "message", error)))
    return found.group(0) if found else type(error).__name__
