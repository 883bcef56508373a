"""The tf.data input pipelines: training (augmented, encoded targets) and evaluation."""

import threading
from collections.abc import Callable

import albumentations as A
import numpy as np
import tensorflow as tf

from detector.data.augment import prepare_example, read_image, resize
from detector.data.records import Record
from detector.targets import STRIDE, encode_targets


def make_train_dataset(
    records: list[Record],
    input_size: int,
    anchors,
    batch_size: int,
    max_boxes: int,
    make_augmenter: Callable[[], A.Compose] | None = None,
    seed: int = 0,
    parallel_calls: int = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """Shuffled, augmented, encoded training batches, repeated per epoch by ``fit``.

    Yields ``((images, y_true, true_boxes), dummy)``: images (B, S, S, 3) float32 pixels
    0..255, y_true (B, S/32, S/32, A, 6), true_boxes (B, max_boxes, 4), dummy (B,) zeros.
    Incomplete last batches are dropped so every step sees ``batch_size`` images.
    ``make_augmenter`` builds one augmenter per loading thread: an albumentations
    ``Compose`` keeps per-call state, so threads must not share one.
    """
    anchors = np.asarray(anchors, np.float32)
    grid = input_size // STRIDE
    local = threading.local()

    def augmenter():
        if make_augmenter is None:
            return None
        if not hasattr(local, "augmenter"):
            local.augmenter = make_augmenter()
        return local.augmenter

    def load(index):
        rng = np.random.default_rng()
        record = records[int(index)]
        image, boxes, classes = prepare_example(record, input_size, augmenter(), rng)
        y_true, true_boxes = encode_targets(
            boxes, classes, (input_size, input_size), anchors, max_boxes
        )
        return image, y_true, true_boxes

    def load_tf(index):
        image, y_true, true_boxes = tf.numpy_function(
            load, [index], (tf.uint8, tf.float32, tf.float32), stateful=True
        )
        image.set_shape((input_size, input_size, 3))
        y_true.set_shape((grid, grid, len(anchors), 6))
        true_boxes.set_shape((max_boxes, 4))
        inputs = (tf.cast(image, tf.float32), y_true, true_boxes)
        return inputs, tf.zeros((), tf.float32)

    ds = tf.data.Dataset.range(len(records))
    ds = ds.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load_tf, num_parallel_calls=parallel_calls, deterministic=False)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(records: list[Record], input_size: int, batch_size: int) -> tf.data.Dataset:
    """Evaluation batches in record order: (images (B, S, S, 3) float32 0..255, indices (B,))."""

    def load(index):
        image = read_image(records[int(index)].path)
        resized, _ = resize(image, np.zeros((0, 4), np.float32), input_size)
        return resized

    def load_tf(index):
        image = tf.numpy_function(load, [index], tf.uint8, stateful=False)
        image.set_shape((input_size, input_size, 3))
        return tf.cast(image, tf.float32), index

    ds = tf.data.Dataset.range(len(records))
    ds = ds.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
