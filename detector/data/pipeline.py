"""The tf.data input pipelines: training (augmented, encoded targets) and evaluation."""

import threading
from collections.abc import Callable

import albumentations as A
import numpy as np
import tensorflow as tf

from detector.data.augment import decode_image, prepare_example, read_image, resize
from detector.data.records import Record
from detector.data.tfrecord import PackedRecords, make_packed_stream, parse_example
from detector.targets import STRIDE, encode_targets


def multiscale_sizes(
    low: int, high: int, count: int, seed: int = 0, step: int = STRIDE
) -> np.ndarray:
    """`count` input sizes drawn uniformly from low, low + 32, ..., high (seeded)."""
    choices = np.arange(low, high + 1, step)
    return np.random.default_rng(seed).choice(choices, size=count).astype(np.int64)


def make_train_dataset(
    records: list[Record],
    input_size: int,
    anchors,
    batch_size: int,
    max_boxes: int,
    make_augmenter: Callable[[], A.Compose] | None = None,
    seed: int = 0,
    parallel_calls: int = tf.data.AUTOTUNE,
    iou_thresh: float = 1.0,
    letterbox: bool = False,
    multiscale: tuple[int, int] | None = None,
    multiscale_every: int = 10,
    start_step: int = 0,
    cache_mb: float = 0.0,
    shard: tuple[int, int] = (1, 0),
    split: int = 1,
) -> tf.data.Dataset:
    """Shuffled, augmented, encoded training batches, endlessly (``fit`` counts the steps).

    Yields ``((images, y_true, true_boxes), dummy)``: images (B, S, S, 3) float32 pixels
    0..255, y_true (B, S/32, S/32, A, 6), true_boxes (B, max_boxes, 4), dummy (B,) zeros.
    Pass k over the records is the permutation drawn from (seed, k), and the augmentation
    of the example at stream position p draws from (seed, p), so every batch is a
    function of the seed and its position in the stream: ``start_step`` (batches
    already trained, e.g. by a resumed run) starts the stream where such a run left it.
    Batches are always full.
    ``make_augmenter`` builds one augmenter per loading thread: an albumentations
    ``Compose`` keeps per-call state, so threads must not share one.
    ``iou_thresh``: extra anchor matches, see ``detector.targets.encode_targets``.
    ``multiscale`` = (min, max): YOLOv2's multi-scale training; every ``multiscale_every``
    batches get a new side S drawn from min..max in steps of 32 (seeded); all images of a
    batch share it. Without it every batch is ``input_size``.
    ``cache_mb``: keep the decoded images in memory when all of them fit in this many MB
    (0 = never): each image is then decoded once per run instead of once per epoch.
    ``shard`` = (count, index): this input pipeline's part of every batch, for
    distributed training (one pipeline per worker). ``batch_size`` stays the global
    batch; the pipeline yields batches of ``batch_size // count`` images: the
    ``index``-th slice of each global batch, so the pipelines' batches of step s together
    are exactly the single-pipeline batch s (same images, same multi-scale size).
    ``split``: this pipeline's slice of a step is yielded as that many consecutive batches
    (one per replica of the worker, as ``distribute_datasets_from_function`` expects).
    """
    count, index = shard
    if count < 1 or not 0 <= index < count or batch_size % (count * split):
        raise ValueError(f"the global batch {batch_size} must split evenly into {count} "
                         f"input pipelines x {split} replicas")  # fmt: skip
    local_batch = batch_size // count
    anchors = np.asarray(anchors, np.float32)
    local = threading.local()
    if multiscale:
        sizes = multiscale_sizes(multiscale[0], multiscale[1], 100_000, seed)
    else:
        sizes = np.array([input_size], np.int64)
    size_table = tf.constant(sizes)
    fixed = None if multiscale else input_size
    grid = None if multiscale else input_size // STRIDE

    def augmenter():
        if make_augmenter is None:
            return None
        if not hasattr(local, "augmenter"):
            local.augmenter = make_augmenter()
        return local.augmenter

    packed = isinstance(records, PackedRecords)
    decoded_mb = 0.0 if packed else sum(r.height * r.width * 3 for r in records) / 2**20
    cache: dict[int, np.ndarray] | None = {} if 0 < decoded_mb <= cache_mb else None

    def read(index: int) -> np.ndarray | None:
        if cache is None:
            return None
        if index not in cache:
            cache[index] = read_image(records[index].path)
        return cache[index]

    def example(record, image, position, size):
        rng = np.random.default_rng([seed, int(position), salt])  # the example's own randomness
        size = int(size)
        image, boxes, classes = prepare_example(record, size, augmenter(), rng, letterbox, image)
        y_true, true_boxes = encode_targets(
            boxes, classes, (size, size), anchors, max_boxes, iou_thresh
        )
        return image, y_true, true_boxes

    def load(position, index, size):
        return example(records[int(index)], read(int(index)), position, size)

    def load_packed(position, size, data, image_id, height, width, boxes, classes):
        record = Record(int(image_id), f"{records.folder} (image id {int(image_id)})",
                        int(height), int(width), boxes.reshape(-1, 4), classes.astype(np.int32),
                        np.zeros((0, 4), np.float32))  # fmt: skip
        return example(record, decode_image(data, record.path), position, size)

    def load_tf(position, item):
        step = position // (local_batch if local_stream else batch_size) // multiscale_every
        size = size_table[step % len(sizes)] if multiscale else tf.constant(input_size, tf.int64)
        outputs = (tf.uint8, tf.float32, tf.float32)
        if packed:
            args = [item[k] for k in ("image", "image_id", "height", "width", "boxes", "classes")]
            image, y_true, true_boxes = tf.numpy_function(
                load_packed, [position, size, *args], outputs, stateful=True
            )
        else:
            image, y_true, true_boxes = tf.numpy_function(
                load, [position, item, size], outputs, stateful=True
            )
        image.set_shape((fixed, fixed, 3))
        y_true.set_shape((grid, grid, len(anchors), 6))
        true_boxes.set_shape((max_boxes, 4))
        inputs = (tf.cast(image, tf.float32), y_true, true_boxes)
        return inputs, tf.zeros((), tf.float32)

    n = len(records)
    start = start_step * batch_size  # elements already consumed (all pipelines together)

    def one_pass(k):
        seeds = tf.stack([tf.constant(seed, tf.int64), k])
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seeds)
        return tf.data.Dataset.from_tensor_slices(order)

    if packed:  # positions of this pipeline's own stream when it reads its own files
        local_stream = count > 1 and len(records.files) >= count
        ds = make_packed_stream(records, seed, start // count if local_stream else start, shard)
    else:
        local_stream = False
        ds = tf.data.Dataset.range(start // n, 2**62).flat_map(one_pass).skip(start % n)
        ds = ds.enumerate(start=start)
    salt = index + 1 if local_stream else 0
    if count > 1 and not local_stream:  # by position: costs nothing next to decoding
        ds = ds.filter(lambda position, _: (position % batch_size) // local_batch == index)
    # In order: batches are then a function of (seed, step), and with multi-scale no batch
    # mixes two sizes.
    ds = ds.map(load_tf, num_parallel_calls=parallel_calls, deterministic=True)
    return ds.batch(local_batch // split, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(
    records: list[Record], input_size: int, batch_size: int, letterbox: bool = False
) -> tf.data.Dataset:
    """Evaluation batches in record order: (images (B, S, S, 3) float32 0..255, indices (B,)).

    Packed records (`PackedRecords`) are read from their TFRecord files, in their order.
    """

    def load(index):
        image = read_image(records[int(index)].path)
        resized, _ = resize(image, np.zeros((0, 4), np.float32), input_size, letterbox)
        return resized

    def decode(index, data):
        image = decode_image(data, f"{records.folder}: packed image {int(index)} of the split")
        return resize(image, np.zeros((0, 4), np.float32), input_size, letterbox)[0]

    def load_tf(index, data=None):
        if data is None:
            image = tf.numpy_function(load, [index], tf.uint8, stateful=False)
        else:
            image = tf.numpy_function(decode, [index, data], tf.uint8, stateful=False)
        image.set_shape((input_size, input_size, 3))
        return tf.cast(image, tf.float32), index

    if isinstance(records, PackedRecords):
        ds = tf.data.TFRecordDataset(records.files).map(lambda s: parse_example(s)["image"])
        ds = ds.enumerate().map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = tf.data.Dataset.range(len(records))
        ds = ds.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
