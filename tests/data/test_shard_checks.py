"""A damaged shard of a packed dataset is named (issue 24): cut shards at load time, a
corrupted record when the shard is read, and the shard a training stream's
``DataLossError`` came from in the run's error line."""

import os
from pathlib import Path

import pytest

from detector.cli.data import main as data_main
from detector.data.shard_checks import damaged_shard, record_spans
from detector.data.spec import load_dataset
from detector.data.tfrecord import make_packed_stream
from detector.engine.faults import RunFailed, resumable
from tests.helpers.data import write_all_formats


@pytest.fixture
def packed(tmp_path) -> Path:
    """A coco spec of 6 images packed in 3 shards of 2 records; returns the pack folder."""
    specs = write_all_formats(str(tmp_path / "src"), count=6)
    assert data_main(["pack", specs["coco"], str(tmp_path / "p"), "--shards", "3"]) == 0
    return tmp_path / "p"


def shard(packed: Path, i: int = 1) -> Path:
    return packed / f"train-{i:05d}-of-00003.tfrecord"


def corrupt(path: Path) -> int:
    """Flips a byte inside the second record's data (the size stays); returns the offset
    of that record's data."""
    start, _ = record_spans(str(path))[0][1]
    data = bytearray(path.read_bytes())
    data[start + 12 + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    return start + 12


@pytest.mark.parametrize("cut", ["half", "a whole record"])
def test_a_cut_shard_is_refused_by_name_at_load_time(packed, capsys, cut):
    path = shard(packed)
    spans, _ = record_spans(str(path))
    # cut at a record boundary, TensorFlow's reader would give one record less, silently
    size = path.stat().st_size // 2 if cut == "half" else spans[0][1]
    os.truncate(path, size)
    with pytest.raises(ValueError) as info:
        load_dataset(str(packed / "spec.yaml"), "train")
    assert str(info.value).startswith(f"{path}: TFRecord shard truncated: {size} bytes")
    assert "pack the dataset again" in str(info.value)
    assert data_main(["check", str(packed / "spec.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: TFRecord shard truncated") and err.count("\n") == 1


def test_a_corrupted_record_names_its_shard_when_read(packed):
    path = shard(packed, 2)
    offset = corrupt(path)
    records = load_dataset(str(packed / "spec.yaml"), "train").records  # same size: loads
    with pytest.raises(ValueError) as info:
        list(records)
    assert str(info.value) == (
        f"{path}: damaged TFRecord shard (corrupted record at {offset}); pack the dataset again"
    )
    with pytest.raises(ValueError, match=f"^{path}: damaged TFRecord shard"):
        records.read_images([5])


def test_the_run_error_names_the_shard_a_training_stream_failed_on(packed, tmp_path):
    path = shard(packed, 1)
    offset = corrupt(path)
    records = load_dataset(str(packed / "spec.yaml"), "train").records
    stream = make_packed_stream(records, seed=0, start=0)
    counts = records.index["file_counts"]
    with pytest.raises(RunFailed) as info:
        with resumable(str(tmp_path / "run"), "spec.yaml", records.files, counts):
            for _ in stream.take(20):  # the error comes without the file from TensorFlow
                pass
    message = str(info.value)
    assert message.startswith(
        f"the training data (spec.yaml) could not be read ({path}: damaged TFRecord shard "
        f"(corrupted record at {offset}); pack the dataset again); no epoch was completed"
    )
    assert message.endswith(f"python train.py --resume {tmp_path / 'run'}")


def test_damaged_shard_reads_the_framing_first(packed):
    files = [str(shard(packed, i)) for i in range(3)]
    assert damaged_shard(files, [2, 2, 2], "corrupted record at 12") == ""  # all whole
    assert damaged_shard(files, [2, 3, 2], "") == f"{files[1]}: 2 records, the index says 3"
    os.truncate(files[2], os.path.getsize(files[2]) - 3)
    start, size = record_spans(files[2])[0][0][1], os.path.getsize(files[2])
    assert damaged_shard(files, None, "truncated record at 99") == (
        f"{files[2]}: truncated record at byte {start} (ends past byte {size})"
    )
