"""Packed (TFRecord) datasets and the sharded training stream."""

import json
import os
import pickle

import numpy as np
import pytest
import yaml

from detector.cli.data import main as data_main
from detector.data.coco import ground_truth
from detector.data.pipeline import TrainInput, make_eval_dataset, make_train_dataset
from detector.data.records import Dataset, RecordList, Records
from detector.data.spec import load_annotations, load_dataset
from detector.data.tfrecord import PackedRecords
from detector.model.anchors import box_shapes
from tests.helpers.data import TINY_MODEL, damage_annotations, set_flags, write_all_formats

ANCHORS = [[1.0, 1.0], [2.0, 2.0]]


def _same_record(a, b):
    assert (a.image_id, a.path, a.height, a.width) == (b.image_id, b.path, b.height, b.width)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_array_equal(a.ignore, b.ignore)


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_pack_then_read_gives_the_source_records(tmp_path, fmt, capsys):
    specs = write_all_formats(str(tmp_path / "src"), count=7)
    damage_annotations(fmt, str(tmp_path / "src"))  # the problems survive the packing too
    source = load_dataset(specs[fmt], "train")
    out = tmp_path / "packed"
    assert data_main(["pack", specs[fmt], str(out), "--shards", "3"]) == 0
    packed = load_dataset(str(out / "spec.yaml"), "train")
    assert isinstance(packed.records, PackedRecords) and len(packed.records) == 7
    assert len(packed.records.files) == 3
    assert packed.names == source.names and packed.category_ids == source.category_ids
    assert dict(packed.problems) == dict(source.problems) and packed.problems
    got = sorted(packed.records, key=lambda r: r.image_id)
    want = sorted(source.records, key=lambda r: r.image_id)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        _same_record(a, b)
    # k-means input (the same boxes, in packed order) and the ground truth are the source's
    shapes = [box_shapes(d.records, 128) for d in (packed, source)]
    shapes = [wh[np.lexsort(wh.T[::-1])] for wh in shapes]
    np.testing.assert_allclose(shapes[0], shapes[1], rtol=1e-6)
    gt_packed, gt_source = ground_truth(packed).dataset, ground_truth(source).dataset
    key = lambda a: (a["image_id"], tuple(np.round(a["bbox"], 3)))  # noqa: E731
    assert sorted(map(key, gt_packed["annotations"])) == sorted(map(key, gt_source["annotations"]))
    assert len(load_annotations(str(out / "spec.yaml"), "val").records) == 7


def _records_of_both_kinds(tmp_path, count=7, shards=3):
    """The same split as a record list and packed (`shards` files)."""
    specs = write_all_formats(str(tmp_path / "src"), count=count)
    source = load_dataset(specs["coco"], "train").records
    assert data_main(["pack", specs["coco"], str(tmp_path / "p"), "--shards", str(shards)]) == 0
    return source, load_dataset(str(tmp_path / "p" / "spec.yaml"), "train").records


def test_both_records_kinds_satisfy_the_protocol_and_agree(tmp_path):
    source, packed = _records_of_both_kinds(tmp_path)
    assert isinstance(source, RecordList) and isinstance(packed, PackedRecords)
    assert isinstance(source, Records) and isinstance(packed, Records)
    assert (source.packed, packed.packed) == (False, True)
    assert len(source) == len(packed) == 7
    for records in (source, packed):
        listed = list(records)  # __iter__
        ids = records.image_ids()
        assert ids.dtype == np.int64 and ids.tolist() == [r.image_id for r in listed]
        for i in (0, 3, len(records) - 1):  # __getitem__ is record i of the iteration
            _same_record(records[i], listed[i])
        # box_table: record by record, in record order, as the records' own boxes say
        np.testing.assert_array_equal(records.box_table(), RecordList(listed).box_table())
    assert sorted(source.image_ids()) == sorted(packed.image_ids())
    by_id = {r.image_id: r for r in source}
    for record in packed:
        _same_record(record, by_id[record.image_id])
    table = source.box_table()
    assert table.shape == (sum(len(r.boxes) for r in source), 4) and table.dtype == np.float32
    first = source[0]
    assert len(first.boxes) and (table[: len(first.boxes), 2:] == [first.width, first.height]).all()
    # read_images: the same pixels, from the image files or from the shards
    where = {int(image_id): i for i, image_id in enumerate(packed.image_ids())}
    wanted = [0, 4, 6]
    from_files = source.read_images(wanted)
    from_shards = packed.read_images([where[source[i].image_id] for i in wanted])
    assert sorted(from_files) == wanted and len(from_shards) == 3
    for i in wanted:
        image = from_files[i]
        assert image.shape == (source[i].height, source[i].width, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, from_shards[where[source[i].image_id]])


def test_records_pickle_cheaply_and_datasets_wrap_lists(tmp_path, monkeypatch):
    source, packed = _records_of_both_kinds(tmp_path, count=4, shards=2)
    import tensorflow as tf

    def forbidden(*args, **kwargs):
        raise AssertionError("pickling must not read the shards")

    monkeypatch.setattr(tf.data, "TFRecordDataset", forbidden)
    again = pickle.loads(pickle.dumps(packed))
    assert len(again) == 4 and again.image_ids().tolist() == packed.image_ids().tolist()
    copied = pickle.loads(pickle.dumps(source))
    assert isinstance(copied, RecordList) and len(copied) == 4
    _same_record(copied[2], source[2])
    dataset = Dataset(list(source), ["a", "b", "c"], [1, 2, 3], None)
    assert isinstance(dataset.records, RecordList) and len(dataset.records) == 4
    assert isinstance(source[1:3], RecordList) and len(source[1:3]) == 2


def test_packed_index_is_all_a_start_reads(tmp_path, monkeypatch):
    specs = write_all_formats(str(tmp_path / "src"), count=5)
    out = tmp_path / "packed"
    data_main(["pack", specs["coco"], str(out), "--shards", "2"])
    import tensorflow as tf

    def forbidden(*args, **kwargs):
        raise AssertionError("a start must not read the shards")

    monkeypatch.setattr(tf.data, "TFRecordDataset", forbidden)
    dataset = load_dataset(str(out / "spec.yaml"), "train")
    assert len(dataset.records) == 5 and box_shapes(dataset.records, 64).shape[1] == 2


def test_packed_errors_name_the_file(tmp_path):
    specs = write_all_formats(str(tmp_path / "src"), count=4)
    out = tmp_path / "packed"
    data_main(["pack", specs["coco"], str(out), "--shards", "2"])
    os.remove(out / "train-00001-of-00002.tfrecord")
    with pytest.raises(ValueError, match="train-00001-of-00002.tfrecord"):
        load_dataset(str(out / "spec.yaml"), "train")
    index = json.loads((out / "val.json").read_text())
    index["version"] = 99
    (out / "val.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="val.json.*version 99"):
        load_dataset(str(out / "spec.yaml"), "val")


def _batches(ds, steps):
    return [tuple(t.numpy() for t in inputs) for inputs, _ in ds.take(steps)]


def test_packed_training_stream_is_a_function_of_the_seed_and_resumes(tmp_path):
    specs = write_all_formats(str(tmp_path / "src"), count=7)
    out = tmp_path / "packed"
    data_main(["pack", specs["coco"], str(out), "--shards", "3"])
    records = load_dataset(str(out / "spec.yaml"), "train").records

    def stream(seed, start_step=0):
        return make_train_dataset(
            TrainInput(records, 64, ANCHORS, 2, 10, None, seed=seed, start_step=start_step)
        )

    first, again = _batches(stream(1), 8), _batches(stream(1), 8)
    for a, b in zip(first, again, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    other = _batches(stream(2), 8)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    resumed = _batches(stream(1, start_step=5), 3)  # crosses a pass boundary (7 images)
    for a, b in zip(first[5:], resumed, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    # every image of a pass appears once in it: 7 images, 3 full batches of 2 + 1 left over
    eval_images = np.concatenate([b.numpy() for b, _ in make_eval_dataset(records, 64, 4)])
    assert eval_images.shape == (7, 64, 64, 3)


@pytest.mark.parametrize("packed", [False, True])
def test_shards_together_make_the_global_batches(tmp_path, packed):
    specs = write_all_formats(str(tmp_path / "src"), count=7)
    records = load_dataset(specs["coco"], "train").records
    if packed:  # 1 file < 2 pipelines: sharded by data, like the record list
        data_main(["pack", specs["coco"], str(tmp_path / "p"), "--shards", "1"])
        records = load_dataset(str(tmp_path / "p" / "spec.yaml"), "train").records

    multiscale = {"multiscale": (64, 128), "multiscale_every": 1}
    spec = TrainInput(records, 64, ANCHORS, 4, 10, None, seed=5, **multiscale)

    def stream(shard=(1, 0), replicas=1):
        return make_train_dataset(spec, shard=shard, replicas_per_pipeline=replicas)

    whole = _batches(stream(), 5)
    parts = [_batches(stream((2, i)), 5) for i in range(2)]
    for step, batch in enumerate(whole):
        a, b = parts[0][step], parts[1][step]
        assert a[0].shape[0] == b[0].shape[0] == 2 and a[0].shape[1] == batch[0].shape[1]
        for k in range(3):
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), batch[k])
    # two replicas on one worker: the worker's half as two consecutive batches of 1
    split = _batches(stream((2, 1), replicas=2), 4)
    np.testing.assert_array_equal(np.concatenate([split[0][0], split[1][0]]), parts[1][0][0])


def test_packed_file_sharding_gives_each_pipeline_its_own_files(tmp_path):
    specs = write_all_formats(str(tmp_path / "src"), count=8)
    data_main(["pack", specs["coco"], str(tmp_path / "p"), "--shards", "4"])
    records = load_dataset(str(tmp_path / "p" / "spec.yaml"), "train").records
    # without augmentation a training image is the evaluation image: find which it is
    plain = np.concatenate([b.numpy() for b, _ in make_eval_dataset(records, 64, 8)])

    def which(image):
        return next(i for i in range(8) if np.array_equal(plain[i], image))

    for index in range(2):
        ds = make_train_dataset(TrainInput(records, 64, ANCHORS, 4, 10, None), shard=(2, index))
        images = np.concatenate([b[0] for b in _batches(ds, 4)])  # local batches of 2
        positions = [which(image) for image in images]
        # records are stored file by file, 2 per file; this pipeline owns files index, index+2
        own = {2 * f + j for f in (index, index + 2) for j in range(2)}
        assert set(positions[:4]) == own and set(positions[4:]) == own  # one pass each


def test_a_packed_dataset_needs_no_source_files(tmp_path, tiny_spec):
    """Pack, delete the source images, then check (with plots), train and evaluate."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    source = tmp_path / "src"
    shutil.copytree(tiny_spec.parent, source)
    out = tmp_path / "packed"
    assert data_main(["pack", str(source / "spec.yaml"), str(out), "--shards", "2"]) == 0
    shutil.rmtree(source)
    spec = str(out / "spec.yaml")
    assert data_main(["check", spec, "--plots", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "augmented.png").stat().st_size > 0
    root = Path(__file__).resolve().parents[2]
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--data",
            spec,
            "--epochs",
            "1",
            "--run-dir",
            str(run_dir),
            *set_flags(*TINY_MODEL, "data.batch_size=8", "train.max_minutes=0"),
            *set_flags("model.num_anchors=3"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    best = json.loads((run_dir / "best.json").read_text())
    assert best["epoch"] == 1 and 0 <= best["AP"] <= 1
    assert "24 train / 8 val images" in proc.stdout
    # the default config's mosaic is not available on packed shards: said, and recorded
    assert "not available with packed records; this run trains without them" in proc.stdout
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    assert recorded["mosaic"] == 0 and recorded["mixup"] == 0
