"""Packed datasets: any spec's splits as sharded TFRecord files, for datasets too large to
list, parse and check at every start.

``python -m detector.data pack SPEC OUT_DIR --shards N`` reads each split once (with the
usual checks: the problems are counted then and kept), and writes per split:

    OUT_DIR/train-00000-of-00008.tfrecord ...   one tf.train.Example per kept image: the
                                                image file's own bytes (not re-encoded),
                                                image_id, path, height, width, boxes,
                                                classes, ignore regions
    OUT_DIR/train.json                          the index: count, files and their sizes,
                                                image ids, names, category ids, problems
    OUT_DIR/train_boxes.npy                     (K, 4) box w, h and image w, h of every
                                                box, for k-means anchors (`box_table`)
    OUT_DIR/train_gt.json                       COCO ground truth of the kept images
    OUT_DIR/spec.yaml                           format: tfrecord, one entry per split

Reading such a spec opens only the index (`load_packed`, which also checks each shard's
size against the index: a cut shard is refused by name): the start-up cost no longer
grows with the number of images. A damaged record is an error naming its shard
(`detector.data.shard_checks`). The records themselves are parsed only when something
iterates over them (`PackedRecords`); training streams the files instead
(`make_packed_stream`): shards interleaved in parallel, shuffled per pass from the seed.
"""

import json
import os

import numpy as np

from detector.data.coco import ground_truth
from detector.data.files import decode_image
from detector.data.records import Dataset, Problems, Record, RecordList
from detector.data.shard_checks import check_sizes, read_shard
from detector.utils.atomic import atomic_path, atomic_write_text

INDEX_VERSION = 1
SHUFFLE_BLOCK = 2048  # examples held in memory by the training stream's shuffle


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _example(record: Record, image_bytes: bytes):
    import tensorflow as tf

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(values).tolist()))

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=np.ravel(values).tolist()))

    def raw(value: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {
        "image": raw(image_bytes),
        "path": raw(record.path.encode("utf-8")),
        "image_id": ints([record.image_id]),
        "height": ints([record.height]),
        "width": ints([record.width]),
        "boxes": floats(record.boxes),
        "classes": ints(record.classes),
        "ignore": floats(record.ignore),
    }
    return tf.train.Example(features=tf.train.Features(feature=features))


def feature_spec() -> dict:
    import tensorflow as tf

    return {
        "image": tf.io.FixedLenFeature([], tf.string),
        "path": tf.io.FixedLenFeature([], tf.string),
        "image_id": tf.io.FixedLenFeature([], tf.int64),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
        "boxes": tf.io.VarLenFeature(tf.float32),
        "classes": tf.io.VarLenFeature(tf.int64),
        "ignore": tf.io.VarLenFeature(tf.float32),
    }


def parse_example(serialized):
    """A serialized example -> dict of tensors (sparse lists made dense, boxes (N, 4))."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, feature_spec())
    for key in ("boxes", "classes", "ignore"):
        parsed[key] = tf.sparse.to_dense(parsed[key])
    parsed["boxes"] = tf.reshape(parsed["boxes"], (-1, 4))
    parsed["ignore"] = tf.reshape(parsed["ignore"], (-1, 4))
    return parsed


def record_of(parsed: dict) -> Record:
    """A `Record` from the numpy values of a parsed example."""
    return Record(
        image_id=int(parsed["image_id"]),
        path=bytes(parsed["path"]).decode("utf-8"),
        height=int(parsed["height"]),
        width=int(parsed["width"]),
        boxes=np.asarray(parsed["boxes"], np.float32).reshape(-1, 4),
        classes=np.asarray(parsed["classes"], np.int32),
        ignore=np.asarray(parsed["ignore"], np.float32).reshape(-1, 4),
    )


def pack_split(dataset: Dataset, out_dir: str, split: str, shards: int) -> dict:
    """Writes `dataset`'s records as `shards` TFRecord files plus the index, box table and
    ground truth (each file atomically); returns the index."""
    index_path = os.path.join(out_dir, f"{split}.json")
    if os.path.exists(index_path):  # written last: until then the split reads as absent
        os.remove(index_path)
    shards = max(1, min(shards, len(dataset.records)))
    parts = [dataset.records[i::shards] for i in range(shards)]  # round robin: equal sizes
    files = [shard_name(split, i, shards) for i in range(shards)]
    for name, part in zip(files, parts, strict=True):
        _write_shard(part, os.path.join(out_dir, name))
    packed = RecordList(record for part in parts for record in part)  # the packed order
    with atomic_path(os.path.join(out_dir, f"{split}_boxes.npy"), suffix=".npy") as tmp:
        np.save(tmp, packed.box_table())
    gt = ground_truth(dataset).dataset
    atomic_write_text(os.path.join(out_dir, f"{split}_gt.json"), json.dumps(gt))
    index = {
        "version": INDEX_VERSION,
        "split": split,
        "count": len(packed),
        "files": files,
        "file_counts": [len(part) for part in parts],
        "file_bytes": [os.path.getsize(os.path.join(out_dir, name)) for name in files],
        "image_ids": packed.image_ids().tolist(),
        "names": list(dataset.names),
        "category_ids": [int(c) for c in dataset.category_ids],
        "problems": dict(dataset.problems),
        "problem_examples": dataset.problems.examples,
    }
    atomic_write_text(index_path, json.dumps(index, indent=1))
    return index


def _write_shard(records, path: str) -> None:
    """One TFRecord file of `records` with their image files' bytes, written atomically."""
    import tensorflow as tf

    with atomic_path(path, suffix=".tfrecord") as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in records:
                with open(record.path, "rb") as f:
                    writer.write(_example(record, f.read()).SerializeToString())


class PackedRecords:
    """`Records` of a packed split: a read-only sequence that reads lazily.

    ``len``, the image ids and the box table come from the index files; iterating or
    indexing parses the TFRecord files once (image bytes are read but not kept) and caches
    the records. Record i is the i-th example in the order of the files, then within each
    file.
    """

    def __init__(self, folder: str, index: dict):
        self.folder = folder
        self.index = index
        self.files = [os.path.join(folder, name) for name in index["files"]]
        self._records: list[Record] | None = None

    @property
    def packed(self) -> bool:
        return True

    def __len__(self) -> int:
        return int(self.index["count"])

    def __bool__(self) -> bool:
        return len(self) > 0

    def _all(self) -> list[Record]:
        if self._records is None:
            records = []
            for parsed in self._parsed(parse_example):
                parsed.pop("image")
                records.append(record_of(parsed))
            self._records = records
        return self._records

    def _parsed(self, parse):
        """`parse` of every record, file by file (a damaged record names its shard)."""
        for path in self.files:
            yield from read_shard(path, parse)

    def __getitem__(self, i):
        return self._all()[i]

    def __iter__(self):
        return iter(self._all())

    def image_ids(self) -> np.ndarray:
        """int64 (N,), from the index (parsed from the shards for a pack without them)."""
        ids = self.index.get("image_ids")
        if ids is None:  # packed before the index held them
            ids = [r.image_id for r in self]
        return np.asarray(ids, np.int64)

    def read_images(self, indices) -> dict[int, np.ndarray]:
        """{i: decoded RGB image} for the record `indices`, in one pass over the shards
        (stops once all are found)."""
        wanted, found = set(int(i) for i in indices), {}
        if not wanted:
            return found
        for i, data in enumerate(self._parsed(lambda s: parse_example(s)["image"])):
            if i in wanted:
                found[i] = decode_image(data, f"{self.folder}: packed image {i}")
                if len(found) == len(wanted):
                    break
        return found

    def box_table(self) -> np.ndarray:
        """float32 (K, 4): width, height of every box and width, height of its image,
        pixels, as saved at packing time."""
        return np.load(os.path.join(self.folder, f"{self.index['split']}_boxes.npy"))


def load_packed(folder: str, split: str, spec_path: str) -> Dataset:
    """The packed split as a `Dataset` whose records are `PackedRecords` (only the index
    is read here); its annotation file is the packed ground truth."""
    index_path = os.path.join(folder, f"{split}.json")
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{spec_path}: {split}: packed index not found: {index_path}") from None
    except ValueError as error:
        raise ValueError(f"{index_path}: not a valid packed index: {error}") from None
    if index.get("version") != INDEX_VERSION:
        raise ValueError(
            f"{index_path}: packed index version {index.get('version')!r}; this "
            f"version reads {INDEX_VERSION} (pack the dataset again)"
        )
    need = ("split", "count", "files", "file_counts", "names", "category_ids")
    lacking = [key for key in need if key not in index]
    if lacking:
        raise ValueError(f"{index_path}: packed index without {lacking} (pack the dataset again)")
    for name in (f"{split}_boxes.npy", f"{split}_gt.json"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise ValueError(
                f"{index_path}: {os.path.join(folder, name)} is missing (pack the dataset again)"
            )
    records = PackedRecords(folder, index)
    missing = [p for p in records.files if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{index_path}: {len(missing)} shard file(s) missing, e.g. {missing[0]}")
    check_sizes(records.files, index.get("file_bytes"), index_path)
    problems = Problems(index.get("problems", {}))
    problems.examples = index.get("problem_examples", {})
    return Dataset(
        records,
        index["names"],
        index["category_ids"],
        os.path.join(folder, f"{split}_gt.json"),
        problems,
    )


def make_packed_stream(records: PackedRecords, seed: int, start: int, shard=(1, 0)):
    """The endless stream of (position, parsed example) a training pipeline maps over.

    Pass k reads this pipeline's shard files in an order drawn from (seed, k), interleaved
    in parallel, and permutes each block of `SHUFFLE_BLOCK` examples by a permutation
    drawn from (seed, k, block): the stream is a function of the seed, and ``start``
    (elements already consumed, e.g. by a resumed run) starts it in the right pass,
    skipping (reading, not decoding) at most one pass.

    ``shard`` = (count, index) splits the data between input pipelines: with at least
    `count` files, pipeline `index` reads files index, index + count, ... (by file; its
    positions then count its own elements); with fewer files every pipeline reads them
    all and the caller keeps every count-th element (by data; positions are global).
    """
    import tensorflow as tf

    count, index = shard
    by_file = count > 1 and len(records.files) >= count
    files = records.files[index::count] if by_file else records.files
    counts = records.index["file_counts"]
    per_pass = sum(counts[index::count]) if by_file else len(records)
    if per_pass == 0:
        raise ValueError(f"input pipeline {index} of {count} has no training image")
    names = tf.constant(files)

    def one_pass(k):
        seeds = tf.stack([tf.constant(seed, tf.int64), k])
        order = tf.random.experimental.stateless_shuffle(tf.range(len(files)), seeds)
        ds = tf.data.Dataset.from_tensor_slices(tf.gather(names, order))
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 16),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

        # Shuffled in blocks with a stateless permutation of each (seed, pass, block): a
        # seeded ds.shuffle cannot take a per-pass seed tensor once a global seed is set.
        def permute(j, block):
            block_seeds = tf.stack([tf.constant(seed, tf.int64), k * 1_000_003 + j])
            n = tf.shape(block, out_type=tf.int64)[0]
            order = tf.random.experimental.stateless_shuffle(tf.range(n), block_seeds)
            return tf.data.Dataset.from_tensor_slices(tf.gather(block, order))

        return ds.batch(min(per_pass, SHUFFLE_BLOCK)).enumerate().flat_map(permute)

    ds = tf.data.Dataset.range(start // per_pass, 2**62).flat_map(one_pass)
    ds = ds.skip(start % per_pass).enumerate(start=start)
    return ds.map(lambda i, s: (i, parse_example(s)), num_parallel_calls=tf.data.AUTOTUNE)
