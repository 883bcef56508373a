"""Every registered custom object of the package keeps the serialization contract.

A new ``register_keras_serializable`` object without a case here fails
``test_every_registered_object_has_a_contract_test``.
"""

import importlib
import pkgutil

import keras
import numpy as np
import pytest

import detector
from detector.engine.schedule import DarknetSchedule
from detector.model.layers import SpaceToDepth, YoloHead
from detector.model.loss import TERMS, YoloLoss, identity_loss
from detector.model.targets import encode_targets
from tests.helpers.layer_contract import check_layer_contract

ANCHORS = [[1.0, 1.5], [3.0, 2.0], [5.0, 6.0]]
NUM_CLASSES = 2
COVERED = {"SpaceToDepth", "YoloHead", "YoloLoss", "identity_loss", "DarknetSchedule"}


def _features(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _loss_inputs(size: int = 96) -> list[np.ndarray]:
    """[raw, y_true, true_boxes] of a batch of 2: one image with 2 objects, one without."""
    per_image = [
        [((10, 20, 50, 70), 0), ((60, 30, 90, 40), 1)],
        [],
    ]
    y_true, true_boxes = [], []
    for objects in per_image:
        boxes = np.array([box for box, _ in objects], np.float32).reshape(-1, 4)
        classes = np.array([c for _, c in objects], np.int32)
        y, t = encode_targets(boxes, classes, (size, size), np.array(ANCHORS), max_boxes=4)
        y_true.append(y)
        true_boxes.append(t)
    y_true = np.stack(y_true)
    raw = _features((*y_true.shape[:4], 5 + NUM_CLASSES), seed=3) * 0.5
    return [raw, y_true, np.stack(true_boxes)]


@pytest.mark.parametrize(
    "block_size, order, channels",
    [(2, "tf", 3), (3, "tf", 5), (2, "darknet", 8), (3, "darknet", 18)],
)
def test_space_to_depth_contract(tmp_path, block_size, order, channels):
    layer = SpaceToDepth(block_size, order=order, name=f"reorg_{order}")
    inputs = _features((2, 4 * block_size, 2 * block_size, channels))
    check_layer_contract(layer, inputs, tmp_path)


def test_yolo_head_contract(tmp_path):
    layer = YoloHead(
        ANCHORS, ["cat", "dog"], 416, category_ids=[17, 18], letterbox=True, name="yolo_head"
    )
    check_layer_contract(layer, _features((2, 3, 4, len(ANCHORS) * (5 + NUM_CLASSES))), tmp_path)


@pytest.mark.parametrize("objectness, class_weights", [("mse", None), ("bce", [0.5, 3.0])])
def test_yolo_loss_contract(tmp_path, objectness, class_weights):
    layer = YoloLoss(
        ANCHORS,
        NUM_CLASSES,
        coord_scale=2.0,
        ignore_thresh=0.5,
        objectness=objectness,
        class_weights=class_weights,
    )
    inputs = _loss_inputs()
    check_layer_contract(layer, inputs, tmp_path)
    assert np.all(keras.ops.convert_to_numpy(layer(inputs)) > 0)  # not a vacuous comparison
    assert YoloLoss.from_config(layer.get_config()).class_weights == class_weights


def test_identity_loss_survives_a_compiled_model_save_and_load(tmp_path):
    inputs = _loss_inputs()
    symbolic = [keras.Input(shape=x.shape[1:]) for x in inputs]
    model = keras.Model(symbolic, YoloLoss(ANCHORS, NUM_CLASSES)(symbolic))
    model.compile(optimizer="sgd", loss=identity_loss)
    path = str(tmp_path / "training.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert loaded.loss is identity_loss
    dummy = np.zeros(len(inputs[0]), np.float32)
    per_image = keras.ops.convert_to_numpy(model(inputs))
    expected = float(np.mean(per_image))
    assert expected > 0
    before = model.evaluate(inputs, dummy, verbose=0, return_dict=True)
    after = loaded.evaluate(inputs, dummy, verbose=0, return_dict=True)
    assert after["loss"] == pytest.approx(expected, rel=1e-5)
    assert after == pytest.approx(before, rel=1e-5)
    assert set(TERMS) <= set(after)  # the loss terms stay metrics of the loaded model


def test_darknet_schedule_survives_a_compiled_model_save_and_load(tmp_path):
    schedule = DarknetSchedule(0.01, 300, 20, schedule="steps", decay_steps=[200, 100])
    config = schedule.get_config()
    assert DarknetSchedule.from_config(config).get_config() == config
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    path = str(tmp_path / "scheduled.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True).optimizer
    revived = loaded._learning_rate  # Keras keeps the schedule object there
    assert type(revived) is DarknetSchedule and revived.get_config() == config
    for step in (0, 19, 20, 150, 250):
        assert float(revived(step)) == float(schedule(step))


def _registered_by_the_package() -> set[str]:
    """Names of the registered objects defined in `detector` (every module imported)."""
    for info in pkgutil.walk_packages(detector.__path__, "detector."):
        importlib.import_module(info.name)
    names = set()
    for key, obj in keras.saving.get_custom_objects().items():
        package, _, name = key.rpartition(">")
        if package == "detector" or getattr(obj, "__module__", "").startswith("detector."):
            names.add(name)
    return names


def test_every_registered_object_has_a_contract_test():
    assert _registered_by_the_package() == COVERED
