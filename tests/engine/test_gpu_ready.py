"""GPU readiness, checked on the CPU: the EMA survives float16's loss scaling, the devices
are described, float16 without a GPU is refused, ``auto`` precision and XLA resolve as
documented on made-up machines, and XLA compiles the train step."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from detector.config.schema import load_config
from detector.engine import devices
from detector.engine.build import make_schedule, make_training_model
from detector.engine.eval_copy import EvalCopy, ema_weights
from detector.model.network import build_inference_model
from detector.utils import native_log

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
            # darknet's squared error: its small no-object gradients survive float16's
            # first loss scale (2**15), so every one of the few steps updates the averages
            "loss.objectness=mse",
            f"model.input_size={SIZE}",
            "data.multiscale=[]",
            f"data.max_boxes={MAX_BOXES}",
            "train.lr=0.01",
        ]
    )
    names = [f"c{i}" for i in range(CLASSES)]
    inference = build_inference_model(CLASSES, ANCHORS, "tiny", 0.25, SIZE, names)
    model = make_training_model(cfg, inference, make_schedule(cfg.train, lr=0.01, steps=steps))
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
        devices.check_precision("mixed_float16", 0)
    devices.check_precision("mixed_float16", 1)
    devices.check_precision("mixed_bfloat16", 0)
    devices.check_precision("float32", 0)
    if not tf.config.list_physical_devices("GPU"):  # by default it asks TensorFlow
        with pytest.raises(ValueError, match=re.escape(message)):
            devices.check_precision("mixed_float16")


def test_devices_described_as_cpu_only_here_with_what_tensorflow_said(monkeypatch):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(native_log, "notes", lambda: [])
    assert devices.describe_devices() == "CPU only"
    said = ["oneDNN on", "no CUDA driver", "no CUDA device"]
    monkeypatch.setattr(native_log, "notes", lambda: said)
    assert devices.describe_devices() == "CPU only (oneDNN on; no CUDA driver)"
    monkeypatch.setattr(native_log, "notes", lambda: ["no CUDA device"])  # a broken driver
    assert devices.describe_devices() == "CPU only (no CUDA device)"


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
    assert devices.describe_devices() == (
        "GPU x3 (NVIDIA A100-SXM4-40GB, NVIDIA A100-SXM4-40GB, /physical_device:GPU:2)"
    )


def test_auto_precision_on_made_up_machines():
    auto = devices.auto_precision
    assert auto([(8, 0), (9, 0)], [])[0] == "mixed_bfloat16"  # A100 + H100
    assert auto([(7, 0)], ["avx512_bf16"])[0] == "mixed_float16"  # V100: the GPU decides
    assert auto([(8, 6), (7, 5)], [])[0] == "mixed_float16"  # one older GPU: all float16
    assert auto([(8, 0), None], [])[0] == "mixed_float16"  # unknown: float16 runs anywhere
    assert auto([], ["sse4_2", "amx_bf16", "amx_tile"]) == ("mixed_bfloat16", "CPU with amx_bf16")
    assert auto([], ["avx512_bf16"])[0] == "mixed_bfloat16"
    assert auto([], ["avx2", "avx512f"])[0] == "float32"


def test_cpu_flags_and_capabilities_are_read_from_the_machine(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert devices.read_cpu_flags(str(cpuinfo)) == {"fpu", "avx512_bf16", "amx_tile"}
    assert devices.read_cpu_flags(str(tmp_path / "missing")) == set()
    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(2)]
    details = {gpus[0].name: {"compute_capability": (7, 5)}, gpus[1].name: {}}
    real = tf.config.list_physical_devices
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else real(kind)
    )
    monkeypatch.setattr(
        tf.config.experimental, "get_device_details", lambda device: details[device.name]
    )
    assert devices.gpu_capabilities() == [(7, 5), None]
    assert devices.resolve_precision("auto") == (
        "mixed_float16",
        "auto: GPU of compute capability < 8.0",
    )
    assert devices.resolve_precision("float32") == ("float32", "as configured")
    precision, jit, line = devices.run_settings("auto", "auto", 2)
    assert (precision, jit) == ("mixed_float16", False)
    assert "XLA off (auto: off with 2 replicas" in line and "keras-team/keras#17187" in line


def test_auto_xla_on_made_up_machines():
    resolve = devices.resolve_jit_compile
    assert resolve("auto", 1, 1) == (True, "auto: one replica")
    assert resolve("auto", 4, 4)[0] is False
    assert resolve("auto", 1, 0)[0] is False  # CPU only: slower with XLA (measured)
    assert resolve(True, 1, 0) == (True, "as configured")
    jit, why = resolve(True, 4, 4)  # e.g. a one-GPU run resumed on four: it could only fail
    assert jit is False and why.startswith("true: off with 4 replicas")
    assert resolve(False, 1, 1) == (False, "as configured")


def test_xla_compiles_the_train_step_on_one_device(monkeypatch):
    """What ``auto`` picks on a one-GPU machine, run here on the CPU: the training model
    (loss layer included) compiled with XLA trains finite steps."""
    monkeypatch.setattr(tf.config, "list_physical_devices", _with_one_fake_gpu())
    jit, _ = devices.resolve_jit_compile("auto", 1, len(tf.config.list_physical_devices("GPU")))
    cfg = load_config(
        overrides=[
            f"model.input_size={SIZE}",
            "data.multiscale=[]",
            f"data.max_boxes={MAX_BOXES}",
            "train.precision=float32",
        ]
    )
    names = [f"c{i}" for i in range(CLASSES)]
    inference = build_inference_model(CLASSES, ANCHORS, "tiny", 0.25, SIZE, names)
    model = make_training_model(cfg, inference, make_schedule(cfg.train, lr=0.01, steps=2))
    monkeypatch.undo()
    assert jit and model.jit_compile is True
    grid = SIZE // 32
    images = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    y_true = np.zeros((4, grid, grid, len(ANCHORS), 6), "float32")
    y_true[:, 0, 1, 0] = [0.3, 0.2, 0.2, 0.3, 1.0, 1.0]
    boxes = np.zeros((4, MAX_BOXES, 4), "float32")
    boxes[:, 0] = [0.3, 0.2, 0.2, 0.3]
    history = model.fit([images, y_true, boxes], np.zeros(4), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert int(model.optimizer.iterations.numpy()) == 2


def _with_one_fake_gpu():
    real = tf.config.list_physical_devices
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    return lambda kind=None: [gpu] if kind == "GPU" else real(kind)


MIRRORED = """
    import numpy as np
    from detector.engine.distribute import split_cpu
    split_cpu(2)
    import tensorflow as tf
    from detector.engine.build import make_schedule, make_training_model
    from detector.config.schema import load_config
    from detector.engine.devices import run_settings
    from detector.model.network import build_inference_model

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print(run_settings("float32", "auto", strategy.num_replicas_in_sync)[2])
    cfg = load_config(
        overrides=["model.input_size=64", "data.multiscale=[]"]
        + ["data.max_boxes=4"]
    )
    with strategy.scope():
        inference = build_inference_model(2, [[1.0, 1.0]], "tiny", 0.125, 64, ["a", "b"])
        model = make_training_model(cfg, inference, make_schedule(cfg.train, lr=0.01, steps=1))
    images = np.zeros((4, 64, 64, 3), "float32")
    y_true = np.zeros((4, 2, 2, 1, 6), "float32")
    history = model.fit([images, y_true, np.zeros((4, 4, 4), "float32")], np.zeros(4),
                        batch_size=4, epochs=1, verbose=0)
    print("jit_compile", model.jit_compile, "loss", history.history["loss"][0])
"""


def test_auto_xla_falls_back_under_a_mirrored_strategy():
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MIRRORED)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "XLA off (auto: off with 2 replicas" in proc.stdout, proc.stdout
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[:2] == ["jit_compile", "False"] and np.isfinite(float(last[3])), last
