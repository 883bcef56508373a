"""The tf.data input pipelines: training (augmented, encoded targets) and evaluation.

Both read any `Records`: a record list opens each image at its path; packed records
(``records.packed``) are streamed from their TFRecord shards.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass

import albumentations as A
import numpy as np
import tensorflow as tf

from detector.data.augment import prepare_example, resize
from detector.data.files import decode_image, read_image
from detector.data.records import Record, Records
from detector.data.tfrecord import make_packed_stream, parse_example
from detector.grid import STRIDE
from detector.targets import encode_targets


def multiscale_sizes(
    low: int, high: int, count: int, seed: int = 0, step: int = STRIDE
) -> np.ndarray:
    """`count` input sizes drawn uniformly from low, low + 32, ..., high (seeded)."""
    choices = np.arange(low, high + 1, step)
    return np.random.default_rng(seed).choice(choices, size=count).astype(np.int64)


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on the anchors is ambiguous
class TrainInput:
    """What the training pipeline reads and how (`make_train_dataset`).

    Attributes:
        records: Records. The training split.
        input_size: int. Network input side, pixels (a multiple of 32): every batch's
            size without `multiscale`.
        anchors: (A, 2) anchor widths and heights, grid cells.
        batch_size: int. The global batch: all input pipelines and replicas together.
        max_boxes: int. Box slots of ``true_boxes`` per image.
        make_augmenter: zero-argument callable returning an albumentations ``Compose``,
            called once per loading thread (a ``Compose`` keeps per-call state, so threads
            must not share one); None: no augmentation.
        seed: int. Seed of the data order and of every example's augmentation.
            Defaults to 0.
        parallel_calls: int. Loading threads; -1 = tf.data AUTOTUNE. Defaults to -1.
        iou_thresh: float. Extra anchor matches above this shape IoU (see
            ``detector.targets.encode_targets``). Defaults to 1.0 (none).
        letterbox: bool. Keep the aspect ratio and pad, else plain resize. Defaults to False.
        multiscale: (min, max) | None. YOLOv2's multi-scale training: every
            `multiscale_every` batches get a new side drawn from min..max in steps of 32
            (seeded); all images of a batch share it. Defaults to None (off).
        multiscale_every: int. Batches per multi-scale size. Defaults to 10.
        start_step: int. Batches already trained (e.g. by a resumed run): the stream
            starts where such a run left it. Defaults to 0.
        cache_mb: float. Keep the decoded images in memory when all of them fit in this
            many MB (then each is decoded once per run, not once per epoch); 0 = never.
            Packed records are never cached. Defaults to 0.
    """

    records: Records
    input_size: int
    anchors: np.ndarray | list
    batch_size: int
    max_boxes: int
    make_augmenter: Callable[[], A.Compose] | None
    seed: int = 0
    parallel_calls: int = -1
    iou_thresh: float = 1.0
    letterbox: bool = False
    multiscale: tuple[int, int] | None = None
    multiscale_every: int = 10
    start_step: int = 0
    cache_mb: float = 0.0


def make_train_dataset(
    spec: TrainInput, shard: tuple[int, int] = (1, 0), replicas_per_pipeline: int = 1
) -> tf.data.Dataset:
    """Shuffled, augmented, encoded training batches, endlessly (``fit`` counts the steps).

    Yields ``((images, y_true, true_boxes), dummy)``: images (B, S, S, 3) float32 pixels
    0..255, y_true (B, S/32, S/32, A, 6), true_boxes (B, max_boxes, 4), dummy (B,) zeros.
    Pass k over the records is the permutation drawn from (seed, k), and the augmentation
    of the example at stream position p draws from (seed, p), so every batch is a
    function of the seed and its position in the stream. Batches are always full.

    Args:
        spec: TrainInput. The records and how to make examples of them.
        shard: (count, index). This input pipeline's part of every batch, for distributed
            training (one pipeline per worker). ``spec.batch_size`` stays the global
            batch; the pipeline yields the ``index``-th slice of ``batch_size // count``
            images of each, so the pipelines' batches of step s together are exactly the
            single-pipeline batch s (same images, same multi-scale size). Defaults to (1, 0).
        replicas_per_pipeline: int. This pipeline's slice of a step is yielded as that
            many consecutive batches, one per replica of the worker (as
            ``distribute_datasets_from_function`` expects). Defaults to 1.
    """
    count, index = shard
    if count < 1 or not 0 <= index < count or spec.batch_size % (count * replicas_per_pipeline):
        raise ValueError(
            f"the global batch {spec.batch_size} must split evenly into {count} input "
            f"pipelines x {replicas_per_pipeline} replicas"
        )
    local_batch = spec.batch_size // count
    start = spec.start_step * spec.batch_size  # elements consumed (all pipelines together)
    records = spec.records
    # a pipeline that reads its own shard files numbers its own elements
    local_stream = records.packed and count > 1 and len(records.files) >= count
    if records.packed:
        first = start // count if local_stream else start
        ds = make_packed_stream(records, spec.seed, first, shard)
    else:
        ds = _shuffled_indices(len(records), spec.seed, start)
    if count > 1 and not local_stream:  # by position: costs nothing next to decoding
        ds = ds.filter(lambda position, _: (position % spec.batch_size) // local_batch == index)
    loader = _ExampleLoader(spec, salt=index + 1 if local_stream else 0)
    load = _load_fn(spec, loader, local_batch if local_stream else spec.batch_size)
    # In order: batches are then a function of (seed, step), and with multi-scale no batch
    # mixes two sizes.
    ds = ds.map(load, num_parallel_calls=spec.parallel_calls, deterministic=True)
    batch = local_batch // replicas_per_pipeline
    return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _shuffled_indices(n: int, seed: int, start: int) -> tf.data.Dataset:
    """(position, record index) from `start` on, endlessly; pass k over the n records is
    the permutation drawn from (seed, k)."""

    def one_pass(k):
        seeds = tf.stack([tf.constant(seed, tf.int64), k])
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seeds)
        return tf.data.Dataset.from_tensor_slices(order)

    ds = tf.data.Dataset.range(start // n, 2**62).flat_map(one_pass).skip(start % n)
    return ds.enumerate(start=start)


class _ExampleLoader:
    """Makes training examples in the loading threads (called through numpy_function).

    Each thread has its own augmenter; an example's randomness is its own, drawn from
    (seed, stream position, salt), so it does not depend on the thread.
    """

    def __init__(self, spec: TrainInput, salt: int):
        self.spec, self.salt = spec, salt
        self.anchors = np.asarray(spec.anchors, np.float32)
        self.local = threading.local()
        records = spec.records
        decoded_mb = 0.0 if records.packed else sum(r.height * r.width * 3 for r in records)
        self.cache = {} if 0 < decoded_mb / 2**20 <= spec.cache_mb else None

    def augmenter(self) -> A.Compose | None:
        if self.spec.make_augmenter is None:
            return None
        if not hasattr(self.local, "augmenter"):
            self.local.augmenter = self.spec.make_augmenter()
        return self.local.augmenter

    def example(self, record: Record, image, position, size):
        """(image uint8 (S, S, 3), y_true, true_boxes) of one record at stream `position`."""
        rng = np.random.default_rng([self.spec.seed, int(position), self.salt])
        size = int(size)
        image, boxes, classes = prepare_example(
            record, size, self.augmenter(), rng, self.spec.letterbox, image
        )
        y_true, true_boxes = encode_targets(
            boxes, classes, (size, size), self.anchors, self.spec.max_boxes, self.spec.iou_thresh
        )
        return image, y_true, true_boxes

    def from_index(self, position, index, size):
        """The example of record `index` of a record list (its image from the cache)."""
        index = int(index)
        image = None
        if self.cache is not None:
            if index not in self.cache:
                self.cache[index] = read_image(self.spec.records[index].path)
            image = self.cache[index]
        return self.example(self.spec.records[index], image, position, size)

    def from_packed(self, position, size, data, image_id, height, width, boxes, classes):
        """The example of a packed record, from its parsed features and image bytes."""
        name = f"{self.spec.records.folder} (image id {int(image_id)})"
        record = Record(
            image_id=int(image_id),
            path=name,
            height=int(height),
            width=int(width),
            boxes=boxes.reshape(-1, 4),
            classes=classes.astype(np.int32),
            ignore=np.zeros((0, 4), np.float32),
        )
        return self.example(record, decode_image(data, record.path), position, size)


def _load_fn(spec: TrainInput, loader: _ExampleLoader, stream_batch: int) -> Callable:
    """The tf.data map function: (position, item) -> ((image, y_true, true_boxes), 0).

    `stream_batch`: elements of the stream per step (the multi-scale size changes with
    the step).
    """
    if spec.multiscale:
        sizes = multiscale_sizes(spec.multiscale[0], spec.multiscale[1], 100_000, spec.seed)
    else:
        sizes = np.array([spec.input_size], np.int64)
    size_table = tf.constant(sizes)
    fixed = None if spec.multiscale else spec.input_size
    grid = None if spec.multiscale else spec.input_size // STRIDE
    outputs = (tf.uint8, tf.float32, tf.float32)

    def load(position, item):
        step = position // stream_batch // spec.multiscale_every
        size = size_table[step % len(sizes)]
        if spec.records.packed:
            keys = ("image", "image_id", "height", "width", "boxes", "classes")
            args = [position, size, *(item[k] for k in keys)]
            example = tf.numpy_function(loader.from_packed, args, outputs, stateful=True)
        else:
            args = [position, item, size]
            example = tf.numpy_function(loader.from_index, args, outputs, stateful=True)
        image, y_true, true_boxes = example
        image.set_shape((fixed, fixed, 3))
        y_true.set_shape((grid, grid, len(loader.anchors), 6))
        true_boxes.set_shape((spec.max_boxes, 4))
        return (tf.cast(image, tf.float32), y_true, true_boxes), tf.zeros((), tf.float32)

    return load


def make_eval_dataset(
    records: Records, input_size: int, batch_size: int, letterbox: bool = False
) -> tf.data.Dataset:
    """Evaluation batches in record order: (images (B, S, S, 3) float32 0..255, indices (B,)).

    Packed records are read from their TFRecord files, in their order.
    """
    no_boxes = np.zeros((0, 4), np.float32)

    def load(index):
        return resize(read_image(records[int(index)].path), no_boxes, input_size, letterbox)[0]

    def decode(index, data):
        image = decode_image(data, f"{records.folder}: packed image {int(index)} of the split")
        return resize(image, no_boxes, input_size, letterbox)[0]

    def load_tf(index, data=None):
        if data is None:
            image = tf.numpy_function(load, [index], tf.uint8, stateful=False)
        else:
            image = tf.numpy_function(decode, [index, data], tf.uint8, stateful=False)
        image.set_shape((input_size, input_size, 3))
        return tf.cast(image, tf.float32), index

    if records.packed:
        ds = tf.data.TFRecordDataset(records.files).map(lambda s: parse_example(s)["image"])
        ds = ds.enumerate()
    else:
        ds = tf.data.Dataset.range(len(records))
    ds = ds.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
