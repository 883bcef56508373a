"""GPU readiness, checked on the CPU: the EMA survives float16's loss scaling, the devices
are described, and float16 without a GPU is refused."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from detector import distribute
from detector.build import make_training_model
from detector.checkpoints import EvalCopy, ema_weights
from detector.config import load_config
from detector.model import build_inference_model

SIZE, CLASSES, ANCHORS, MAX_BOXES = 64, 3, [[1.0, 1.0], [2.0, 2.0]], 4


@pytest.fixture
def policy(request):
    """Sets the global dtype policy for one test and restores the previous one."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy(previous)


class AtLastEpochEnd(keras.callbacks.Callback):
    """Keeps what `SaveLast` would save at the last epoch end (EMA weights) and the raw
    weights then, before ``fit`` ends by overwriting the weights with their averages."""

    def __init__(self, inference):
        super().__init__()
        self.inference = inference
        self.eval_copy = EvalCopy(inference)

    def on_epoch_end(self, epoch, logs=None):
        self.raw = self.inference.get_weights()
        self.direct = ema_weights(self.inference, self.model.optimizer)
        self.synced = self.eval_copy.sync(self.model.optimizer).get_weights()


def fit_tiny(steps: int = 3, batch: int = 2):
    """Builds the training model under the current policy with EMA and fits `steps`
    steps of one epoch on random images without objects (the no-object loss trains)."""
    cfg = load_config(
        overrides=[
            "train.ema_momentum=0.9",
            f"model.input_size={SIZE}",
            f"data.max_boxes={MAX_BOXES}",
            "train.lr=0.01",
        ]
    )
    names = [f"c{i}" for i in range(CLASSES)]
    inference = build_inference_model(CLASSES, ANCHORS, "tiny", 0.25, SIZE, names)
    model = make_training_model(cfg, inference, lr=0.01)
    n, grid = steps * batch, SIZE // 32
    images = np.random.default_rng(0).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")
    y_true = np.zeros((n, grid, grid, len(ANCHORS), 6), "float32")
    true_boxes = np.zeros((n, MAX_BOXES, 4), "float32")
    record = AtLastEpochEnd(inference)
    history = model.fit(
        [images, y_true, true_boxes],
        np.zeros(n),
        batch_size=batch,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[record],
    )
    return model, inference, record, history.history["loss"]


@pytest.mark.parametrize("policy", ["mixed_float16", "float32"], indirect=True)
def test_evaluation_gets_the_moving_averages(policy):
    model, inference, record, losses = fit_tiny()
    optimizer = model.optimizer
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")
    assert not scaled or not optimizer.use_ema  # the wrapper that hid the averages
    # fit's last act copies the optimiser's averages into the trainable weights; the
    # non-trainable ones (BatchNorm statistics) are not averaged and stay as they were.
    averages = inference.get_weights()
    trainable = {id(v) for v in inference.trainable_weights}
    is_trainable = [id(v) in trainable for v in inference.weights]
    assert any(is_trainable) and not all(is_trainable)
    for synced, direct, average, raw, averaged in zip(
        record.synced, record.direct, averages, record.raw, is_trainable, strict=True
    ):
        np.testing.assert_array_equal(synced, average)
        np.testing.assert_array_equal(direct, average)
        if not averaged:
            np.testing.assert_array_equal(synced, raw)
    moved = [
        np.abs(s - r).max()
        for s, r, a in zip(record.synced, record.raw, is_trainable, strict=True)
        if a
    ]
    assert max(moved) > 0, "the evaluation weights are the raw ones, not their averages"
    assert np.isfinite(losses).all()
    if scaled:
        scale = float(optimizer.dynamic_scale.numpy())
        assert np.isfinite(scale) and scale >= 1.0


def test_without_ema_the_weights_themselves():
    inference = build_inference_model(CLASSES, ANCHORS, "tiny", 0.25, SIZE)
    kernel = inference.get_layer("conv_1").kernel
    kernel.assign(np.full(kernel.shape, 0.5, "float32"))
    plain = keras.optimizers.Adam()
    plain.build(inference.trainable_weights)
    wrapped = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
    wrapped.build(inference.trainable_weights)
    for optimizer in (None, plain, wrapped):
        weights = ema_weights(inference, optimizer)
        for got, want in zip(weights, inference.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)


def test_float16_without_a_gpu_is_refused():
    message = (
        "train.precision: mixed_float16 needs a GPU (this process sees CPU only); "
        "use mixed_bfloat16 or float32"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        distribute.check_precision("mixed_float16", 0)
    distribute.check_precision("mixed_float16", 1)
    distribute.check_precision("mixed_bfloat16", 0)
    distribute.check_precision("float32", 0)
    if not tf.config.list_physical_devices("GPU"):  # by default it asks TensorFlow
        with pytest.raises(ValueError, match=re.escape(message)):
            distribute.check_precision("mixed_float16")


def test_devices_described_as_cpu_only_here():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    assert distribute.describe_devices() == "CPU only"


def test_gpus_described_by_name(monkeypatch):
    gpus = [
        tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU")
        for i in range(3)
    ]
    details = {
        gpus[0].name: {"device_name": "NVIDIA A100-SXM4-40GB", "compute_capability": (8, 0)},
        gpus[1].name: {"device_name": "NVIDIA A100-SXM4-40GB", "compute_capability": (8, 0)},
        gpus[2].name: {},  # no name reported: the TensorFlow device name stands in
    }
    real = tf.config.list_physical_devices
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else real(kind)
    )
    monkeypatch.setattr(
        tf.config.experimental, "get_device_details", lambda device: details[device.name]
    )
    assert distribute.describe_devices() == (
        "GPU x3 (NVIDIA A100-SXM4-40GB, NVIDIA A100-SXM4-40GB, /physical_device:GPU:2)"
    )
