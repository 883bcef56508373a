"""The tf.data input pipelines: training (augmented, encoded targets) and evaluation."""

import threading
from collections.abc import Callable

import albumentations as A
import numpy as np
import tensorflow as tf

from detector.data.augment import prepare_example, read_image, resize
from detector.data.records import Record
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
) -> tf.data.Dataset:
    """Shuffled, augmented, encoded training batches, endlessly (``fit`` counts the steps).

    Yields ``((images, y_true, true_boxes), dummy)``: images (B, S, S, 3) float32 pixels
    0..255, y_true (B, S/32, S/32, A, 6), true_boxes (B, max_boxes, 4), dummy (B,) zeros.
    Pass k over the records is the permutation drawn from (seed, k), so the data order is
    a function of the seed and the position in the stream: ``start_step`` (batches
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
    """
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

    decoded_mb = sum(r.height * r.width * 3 for r in records) / 2**20
    cache: dict[int, np.ndarray] | None = {} if 0 < decoded_mb <= cache_mb else None

    def read(index: int) -> np.ndarray | None:
        if cache is None:
            return None
        if index not in cache:
            cache[index] = read_image(records[index].path)
        return cache[index]

    def load(index, size):
        rng = np.random.default_rng()
        record = records[int(index)]
        size = int(size)
        image, boxes, classes = prepare_example(
            record, size, augmenter(), rng, letterbox, image=read(int(index))
        )
        y_true, true_boxes = encode_targets(
            boxes, classes, (size, size), anchors, max_boxes, iou_thresh
        )
        return image, y_true, true_boxes

    def load_tf(position, index):
        step = position // batch_size // multiscale_every
        size = size_table[step % len(sizes)] if multiscale else tf.constant(input_size, tf.int64)
        image, y_true, true_boxes = tf.numpy_function(
            load, [index, size], (tf.uint8, tf.float32, tf.float32), stateful=True
        )
        image.set_shape((fixed, fixed, 3))
        y_true.set_shape((grid, grid, len(anchors), 6))
        true_boxes.set_shape((max_boxes, 4))
        inputs = (tf.cast(image, tf.float32), y_true, true_boxes)
        return inputs, tf.zeros((), tf.float32)

    n = len(records)
    start = start_step * batch_size  # elements already consumed

    def one_pass(k):
        seeds = tf.stack([tf.constant(seed, tf.int64), k])
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seeds)
        return tf.data.Dataset.from_tensor_slices(order)

    ds = tf.data.Dataset.range(start // n, 2**62).flat_map(one_pass).skip(start % n)
    ds = ds.enumerate(start=start)
    # With multi-scale, batches must be formed in order so no batch mixes two sizes.
    ds = ds.map(load_tf, num_parallel_calls=parallel_calls, deterministic=bool(multiscale))
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(
    records: list[Record], input_size: int, batch_size: int, letterbox: bool = False
) -> tf.data.Dataset:
    """Evaluation batches in record order: (images (B, S, S, 3) float32 0..255, indices (B,))."""

    def load(index):
        image = read_image(records[int(index)].path)
        resized, _ = resize(image, np.zeros((0, 4), np.float32), input_size, letterbox)
        return resized

    def load_tf(index):
        image = tf.numpy_function(load, [index], tf.uint8, stateful=False)
        image.set_shape((input_size, input_size, 3))
        return tf.cast(image, tf.float32), index

    ds = tf.data.Dataset.range(len(records))
    ds = ds.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
