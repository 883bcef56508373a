"""The tf.data input pipelines: training (augmented, encoded targets) and evaluation.

Both read any `Records`: a record list opens each image at its path; packed records
(``records.packed``) are streamed from their TFRecord shards.
"""

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import tensorflow as tf

from detector.data.augment import FILL, Augmenter, prepare_example, resize
from detector.data.files import decode_image, decode_reduced, read_image
from detector.data.mosaic import ExampleMaker, MosaicSwitch, reduce_factor, shrink
from detector.data.records import Record, Records
from detector.data.tfrecord import make_packed_stream, parse_example
from detector.model.grid import STRIDE
from detector.model.targets import encode_targets


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
        make_augmenter: zero-argument callable returning the `Augmenter` (immutable,
            shared by the loading threads); None: no augmentation.
        seed: int. Seed of the data order and of every example's augmentation.
            Defaults to 0.
        parallel_calls: int. Loading threads; -1 = tf.data AUTOTUNE. Defaults to -1.
        iou_thresh: float. Extra anchor matches above this shape IoU (see
            ``detector.model.targets.encode_targets``). Defaults to 1.0 (none).
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
        mosaic: float. Probability of a 4-image mosaic example (record lists only).
            Defaults to 0.
        mixup: float. Probability of blending an example with a second one. Defaults to 0.
        mosaic_until: int | None. Stream position (elements, all pipelines together)
            from which mosaic and mixup are off (``train.close_mosaic`` in epochs); None:
            never. Defaults to None.
        mosaic_switch: MosaicSwitch | None. Turns mosaic and mixup off when closed
            (``train.close_mosaic`` as a share of the time budget). Defaults to None.
    """

    records: Records
    input_size: int
    anchors: np.ndarray | list
    batch_size: int
    max_boxes: int
    make_augmenter: Callable[[], Augmenter] | None
    seed: int = 0
    parallel_calls: int = -1
    iou_thresh: float = 1.0
    letterbox: bool = False
    multiscale: tuple[int, int] | None = None
    multiscale_every: int = 10
    start_step: int = 0
    cache_mb: float = 0.0
    mosaic: float = 0.0
    mixup: float = 0.0
    mosaic_until: int | None = None
    mosaic_switch: MosaicSwitch | None = None


def _check_input(spec: TrainInput, shard: tuple[int, int], replicas_per_pipeline: int) -> None:
    """ValueError when the batch does not split over the pipelines and replicas, or when
    mosaic / mixup are asked of packed records."""
    count, index = shard
    if count < 1 or not 0 <= index < count or spec.batch_size % (count * replicas_per_pipeline):
        raise ValueError(
            f"the global batch {spec.batch_size} must split evenly into {count} input "
            f"pipelines x {replicas_per_pipeline} replicas"
        )
    records = spec.records
    if records.packed and (spec.mosaic > 0 or spec.mixup > 0):
        raise ValueError(
            f"data.mosaic / data.mixup ({spec.mosaic:g} / {spec.mixup:g}): not supported "
            f"with packed records ({records.folder}); use the dataset spec's record list "
            "or set data.mosaic: 0 and data.mixup: 0"
        )


def make_train_dataset(
    spec: TrainInput, shard: tuple[int, int] = (1, 0), replicas_per_pipeline: int = 1
) -> tf.data.Dataset:
    """Shuffled, augmented, encoded training batches, endlessly (``fit`` counts the steps).

    Yields ``((images, y_true, true_boxes), dummy)``: images (B, S, S, 3) uint8 pixels
    (the model casts them on its device: a quarter of the bytes to move),
    y_true (B, S/32, S/32, A, 6), true_boxes (B, max_boxes, 4), dummy (B,) zeros.
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
    _check_input(spec, shard, replicas_per_pipeline)
    count, index = shard
    local_batch = spec.batch_size // count
    start = spec.start_step * spec.batch_size  # elements consumed (all pipelines together)
    records = spec.records
    # OpenCV's own thread pool would oversubscribe the cores beside tf.data's threads
    cv2.setNumThreads(1)
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
    batch = local_batch // replicas_per_pipeline
    load = _load_fn(spec, loader, local_batch if local_stream else spec.batch_size, batch)
    # The items are batched before loading: one numpy_function call makes a whole batch
    # (tf.data's cost per image, measured on coco128 at 416: ~0.15 ms with a call and a
    # batching copy per image, ~0.07 ms so), each example still drawn from its own stream
    # position. Batches are aligned with the steps: one batch, one multi-scale size.
    if records.packed:
        ds = ds.map(lambda position, item: (position, {k: item[k] for k in _PACKED_KEYS}))
        ds = ds.ragged_batch(batch, drop_remainder=True)  # boxes, classes: (B, None, ...)
    else:
        ds = ds.batch(batch, drop_remainder=True)
    # In order: batches are then a function of (seed, step).
    ds = ds.map(load, num_parallel_calls=spec.parallel_calls, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


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

    An example's randomness is its own, drawn from (seed, stream position, salt), so it
    does not depend on the thread. Everything between OpenCV's calls (which release the
    GIL) is a few vectorised numpy lines. An unreadable image never raises out of here
    (an exception inside ``numpy_function`` can deadlock the process at exit): a record
    list substitutes the next readable record (`ExampleMaker`), a packed record an empty
    grey image; each is named once on stderr.
    """

    def __init__(self, spec: TrainInput, salt: int):
        self.spec, self.salt = spec, salt
        self.anchors = np.asarray(spec.anchors, np.float32)
        self.augmenter = spec.make_augmenter() if spec.make_augmenter else None
        largest = max([spec.input_size, *(spec.multiscale or ())])
        # without augmentation an example is evaluation's image exactly: full decode
        zoom = self.augmenter.max_zoom if self.augmenter is not None else 0.0
        self.work_side = math.ceil(largest * max(zoom, 1.0)) if zoom else 0
        records = spec.records
        self.maker = None
        if not records.packed:
            decoded_mb = sum(r.height * r.width * 3 for r in records) / 2**20
            cache = 0 < decoded_mb <= spec.cache_mb
            self.maker = ExampleMaker(
                records,
                self.augmenter,
                spec.letterbox,
                self.work_side,
                spec.mosaic,
                spec.mixup,
                cache,
            )
        self.unreadable: set[int] = set()

    def several(self, position: int) -> bool:
        """Whether mosaic / mixup may be drawn at stream `position` (not closed)."""
        until, switch = self.spec.mosaic_until, self.spec.mosaic_switch
        return (until is None or position < until) and not (switch and switch.closed)

    def encode(self, image, boxes, classes, size: int):
        y_true, true_boxes = encode_targets(
            boxes, classes, (size, size), self.anchors, self.spec.max_boxes, self.spec.iou_thresh
        )
        return image, y_true, true_boxes

    def from_index(self, position, index, size):
        """The example of record `index` of a record list at stream `position`."""
        position, size = int(position), int(size)
        rng = np.random.default_rng([self.spec.seed, position, self.salt])
        example = self.maker.make(int(index), size, rng, self.several(position))
        return self.encode(*example, size)

    def from_packed(self, position, size, data, image_id, height, width, boxes, classes):
        """The example of a packed record, from its parsed features and image bytes."""
        position, size = int(position), int(size)
        rng = np.random.default_rng([self.spec.seed, position, self.salt])
        name = f"{self.spec.records.folder} (image id {int(image_id)})"
        factor = reduce_factor(int(height), int(width), self.work_side, self.spec.letterbox)
        try:
            image = decode_reduced(data, name, factor, bgr=True)
            image = shrink(image, self.work_side, self.spec.letterbox)
        except ValueError as error:  # undecodable, or over the pixel limit (not decoded)
            if int(image_id) not in self.unreadable:
                self.unreadable.add(int(image_id))
                print(f"warning: {error}; an empty image is used", file=sys.stderr)
            image, boxes = np.full((size, size, 3), FILL, np.uint8), np.zeros((0, 4))
            height, width, classes = size, size, np.zeros(0, np.int32)
        record = Record(
            image_id=int(image_id),
            path=name,
            height=int(height),
            width=int(width),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            classes=np.asarray(classes, np.int32),
            ignore=np.zeros((0, 4), np.float32),
        )
        example = prepare_example(
            record, size, self.augmenter, rng, self.spec.letterbox, image, bgr=True
        )
        if self.augmenter is not None:  # the user's albumentations stage, last
            example = self.augmenter.finish(*example, rng)
        return self.encode(*example, size)

    def index_batch(self, positions, indices, size):
        """The examples of record list `indices` at stream `positions`, stacked."""
        pairs = zip(positions, indices, strict=True)
        return _stack((self.from_index(p, i, size) for p, i in pairs), len(positions), size)

    def packed_batch(self, positions, size, data, ids, heights, widths, boxes, classes):
        """The examples of packed records at stream `positions`, stacked. `boxes`,
        `classes`: (flat values, row splits) of the records' boxes and classes."""
        box_values, box_splits = boxes
        class_values, class_splits = classes

        def examples():
            for k, position in enumerate(positions):
                box_rows = box_values[box_splits[k] : box_splits[k + 1]]
                class_rows = class_values[class_splits[k] : class_splits[k + 1]]
                fields = (data[k], ids[k], heights[k], widths[k], box_rows, class_rows)
                yield self.from_packed(position, size, *fields)

        return _stack(examples(), len(positions), size)


def _stack(examples, count: int, size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (count, size, size, 3), y_true, true_boxes) of `count` examples.

    Each image is copied into the batch as soon as it is made and then freed: holding a
    batch of separate images and stacking them made the allocator return memory to the
    system and fault it back in (measured: ~270 page faults, 0.6 ms, an image).
    """
    size = int(size)
    images = np.empty((count, size, size, 3), np.uint8)
    y_true, true_boxes = [], []
    for k, (image, y, boxes) in enumerate(examples):
        images[k] = image
        y_true.append(y)
        true_boxes.append(boxes)
    return images, np.stack(y_true), np.stack(true_boxes)


_PACKED_KEYS = ("image", "image_id", "height", "width", "boxes", "classes")


def _load_fn(spec: TrainInput, loader: _ExampleLoader, stream_batch: int, batch: int) -> Callable:
    """The tf.data map function: (positions (B,), items) -> ((images, y_true,
    true_boxes), zeros (B,)) for one batch of B = `batch` consecutive stream elements.

    `stream_batch`: elements of the stream per step (the multi-scale size changes with
    the step; a batch never spans two steps).
    """
    if spec.multiscale:
        sizes = multiscale_sizes(spec.multiscale[0], spec.multiscale[1], 100_000, spec.seed)
    else:
        sizes = np.array([spec.input_size], np.int64)
    size_table = tf.constant(sizes)
    fixed = None if spec.multiscale else spec.input_size
    grid = None if spec.multiscale else spec.input_size // STRIDE
    outputs = (tf.uint8, tf.float32, tf.float32)

    def load(positions, items):
        step = positions[0] // stream_batch // spec.multiscale_every
        size = size_table[step % len(sizes)]
        if spec.records.packed:
            boxes, classes = items["boxes"], items["classes"]
            args = [positions, size, *(items[k] for k in _PACKED_KEYS[:4])]
            args += [boxes.flat_values, boxes.row_splits, classes.flat_values, classes.row_splits]

            def make(positions, size, data, ids, heights, widths, *ragged):
                parts = (ragged[:2], ragged[2:])
                return loader.packed_batch(positions, size, data, ids, heights, widths, *parts)

            example = tf.numpy_function(make, args, outputs, stateful=True)
        else:
            args = [positions, items, size]
            example = tf.numpy_function(loader.index_batch, args, outputs, stateful=True)
        images, y_true, true_boxes = example
        images.set_shape((batch, fixed, fixed, 3))
        y_true.set_shape((batch, grid, grid, len(loader.anchors), 6))
        true_boxes.set_shape((batch, spec.max_boxes, 4))
        return (images, y_true, true_boxes), tf.zeros((batch,), tf.float32)

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
