"""Tests of the training pipeline's example stream: uint8 batches, mosaic closing, errors."""

import os

import numpy as np
import pytest

from detector.data.augment import prepare_example
from detector.data.mosaic import MosaicSwitch
from detector.data.pipeline import TrainInput, make_train_dataset
from tests.data.test_mosaic import augmenter, coloured_records

ANCHORS = [[1.0, 1.0], [2.0, 2.0]]
COLOUR = {"hue": 0.1, "saturation": 1.5, "exposure": 1.5}  # colour jitter on


def _images(ds, batches: int) -> np.ndarray:
    return np.concatenate([b[0][0].numpy() for b in ds.take(batches)])


def _is_plain(records, image) -> bool:
    """Whether `image` is one record's plain (non-mosaic) 64-px example."""
    plain = [prepare_example(r, 64, None, None)[0] for r in records if os.path.exists(r.path)]
    return any(np.array_equal(p, image) for p in plain)


def test_batches_are_uint8_and_mosaic_closes_at_the_exact_position(tmp_path):
    records = coloured_records(tmp_path)
    spec = TrainInput(records, 64, ANCHORS, 2, 10, None, mosaic=1.0, mosaic_until=6)
    first = next(iter(make_train_dataset(spec)))
    assert first[0][0].dtype.name == "uint8"
    images = _images(make_train_dataset(spec), 6)
    assert [_is_plain(records, image) for image in images] == [False] * 6 + [True] * 6
    # resumed at step 2 (position 4): the same examples at the same positions
    resumed = _images(make_train_dataset(TrainInput(**{**spec.__dict__, "start_step": 2})), 4)
    np.testing.assert_array_equal(resumed, images[4:12])


def test_a_closed_switch_turns_mosaic_off(tmp_path):
    records = coloured_records(tmp_path)
    switch = MosaicSwitch()
    spec = TrainInput(records, 64, ANCHORS, 2, 10, None, mosaic=1.0, mosaic_switch=switch)
    assert not any(_is_plain(records, image) for image in _images(make_train_dataset(spec), 2))
    switch.close()
    assert all(_is_plain(records, image) for image in _images(make_train_dataset(spec), 2))


def test_an_image_deleted_while_training_is_substituted_not_raised(tmp_path, capfd):
    records = coloured_records(tmp_path)
    (tmp_path / "img2.png").unlink()
    spec = TrainInput(records, 64, ANCHORS, 2, 10, None, seed=3)
    images = _images(make_train_dataset(spec), 8)  # two passes over the 4 records
    assert all(_is_plain(records, image) for image in images)
    assert capfd.readouterr().err.count("img2.png: cannot read image") == 1


def test_mosaic_with_packed_records_is_refused():
    class Packed(list):
        packed, folder = True, "packed/"

    spec = TrainInput(Packed(), 64, ANCHORS, 2, 10, None, mosaic=0.5)
    with pytest.raises(ValueError, match="data.mosaic"):
        make_train_dataset(spec)


def test_the_model_casts_uint8_batches_itself():
    import tensorflow as tf

    from detector.model.network import build_inference_model

    model = build_inference_model(2, ANCHORS, "tiny", 0.125, 64)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    as_uint8 = tf.function(lambda x: model(x))(tf.constant(pixels))
    np.testing.assert_array_equal(as_uint8, model(pixels.astype(np.float32)))


@pytest.mark.parametrize(
    ("close", "minutes", "until"),
    [(2, 0, 8 * 5 * 4), (2, 30, 8 * 5 * 4), (0.25, 0, round(7.5 * 5) * 4), (0.25, 30, None)],
)
def test_close_mosaic_position_from_the_config(close, minutes, until):
    from detector.config.schema import load_config
    from detector.engine.build import _mosaic_until
    from detector.engine.plan import RunPlan

    keys = ["train.epochs=10", f"train.close_mosaic={close}", f"train.max_minutes={minutes}"]
    cfg = load_config("configs/default.yaml", [*keys, "data.batch_size=4"])
    plan = RunPlan(cfg, "run", "run", ANCHORS, steps=5, lr=1e-3)
    assert _mosaic_until(cfg, plan) == until


def test_close_mosaic_callback_closes_at_the_budget_share():
    from detector.engine.callbacks.mosaic import CloseMosaic

    class Budget:
        share = 0.0

        def shared_fraction(self):
            return self.share

    budget, switch = Budget(), MosaicSwitch()
    callback = CloseMosaic(switch, budget, 0.25)
    for share, closed in [(0.0, False), (0.74, False), (0.75, True), (0.1, True)]:
        budget.share = share
        callback.on_train_batch_end(0)
        assert switch.closed == closed
    # the epochs end the run first: closed at the same share of them
    budget.share, switch = 0.0, MosaicSwitch()
    callback = CloseMosaic(switch, budget, 0.25, epochs=20)
    for epoch, closed in [(0, False), (14, False), (15, True)]:
        callback.on_epoch_begin(epoch)
        assert switch.closed == closed


def test_a_batch_is_its_positions_examples_at_its_steps_size(tmp_path):
    from detector.data.pipeline import _ExampleLoader, _shuffled_indices, multiscale_sizes

    records = coloured_records(tmp_path)
    spec = TrainInput(
        records, 64, ANCHORS, 4, 10, lambda: augmenter(**COLOUR), seed=5,
        multiscale=(64, 128), multiscale_every=1, start_step=1,
    )  # fmt: skip
    # one pipeline of two replicas: each step is yielded as two batches of 2
    batches = list(make_train_dataset(spec, replicas_per_pipeline=2).take(6))
    loader = _ExampleLoader(spec, salt=0)
    stream = list(_shuffled_indices(len(records), 5, 4).take(12).as_numpy_iterator())
    sizes = multiscale_sizes(64, 128, 100_000, 5)
    for k, ((images, y_true, true_boxes), dummy) in enumerate(batches):
        size = sizes[1 + k // 2]
        assert images.shape == (2, size, size, 3) and dummy.shape == (2,)
        for j, (position, index) in enumerate(stream[2 * k : 2 * k + 2]):
            want = loader.from_index(position, index, size)
            np.testing.assert_array_equal(images[j], want[0])
            np.testing.assert_array_equal(y_true[j], want[1])
            np.testing.assert_array_equal(true_boxes[j], want[2])
    assert len({b[0][0].shape[1] for b in batches}) > 1
