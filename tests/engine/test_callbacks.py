import json
import os

import keras
import numpy as np
import pytest

from detector.data.coco import ground_truth
from detector.data.spec import load_dataset
from detector.engine.callbacks.best import KeepBest
from detector.engine.callbacks.coco_ap import BestCocoAP
from detector.engine.callbacks.guards import NonFiniteGuard, NonFiniteLoss
from detector.engine.eval_copy import EvalCopy
from detector.engine.schedule import DarknetSchedule, learning_rate_at
from detector.model.network import build_inference_model


def make_callback(tiny_spec, run_dir, aps):
    val = load_dataset(str(tiny_spec), "val")
    model = build_inference_model(len(val.names), [[1, 1], [2, 2]], "tiny", 0.25, 64, val.names)
    keep = KeepBest(str(run_dir))
    callback = BestCocoAP(
        EvalCopy(model), val, ground_truth(val), lambda epoch: True, listeners=[keep]
    )
    scripted = iter(aps)
    callback.evaluate = lambda curves=None: {
        "AP": next(scripted),
        "per_class": {},
        **dict.fromkeys(
            ("AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"), 0.0
        ),
    }
    callback.set_model(model)
    callback.set_params({"epochs": len(aps)})
    callback.on_train_begin()
    return callback, model, keep


def test_saves_only_on_improvement(tiny_spec, tmp_path):
    callback, model, keep = make_callback(tiny_spec, tmp_path, [0.1, 0.3, 0.2, 0.3, 0.5])
    best_epochs = []
    for epoch in range(5):
        logs = {}
        callback.on_epoch_end(epoch, logs)
        best_epochs.append(json.loads((tmp_path / "best.json").read_text())["epoch"])
        assert "AP" in logs
    assert best_epochs == [1, 2, 2, 2, 5]
    assert keep.best_ap == 0.5
    loaded = keras.models.load_model(str(tmp_path / "best.keras"), safe_mode=True)
    assert loaded.get_layer("yolo_head").class_names == model.get_layer("yolo_head").class_names


def test_failed_save_leaves_previous_checkpoint_and_no_temp_file(tiny_spec, tmp_path):
    callback, _, _ = make_callback(tiny_spec, tmp_path, [0.1, 0.4])
    callback.on_epoch_end(0, {})
    before = (tmp_path / "best.keras").read_bytes()

    def broken_save(path):
        with open(path, "wb") as f:
            f.write(b"half a zip")
        raise OSError("disk full")

    callback.eval_copy.model.save = broken_save
    with pytest.raises(OSError, match="disk full"):
        callback.on_epoch_end(1, {})
    assert (tmp_path / "best.keras").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["best.json", "best.keras"]


def test_evaluation_model_gets_the_training_weights(tiny_spec, tmp_path):
    val = load_dataset(str(tiny_spec), "val")
    model = build_inference_model(len(val.names), [[1, 1]], "tiny", 0.25, 64, val.names)
    callback = BestCocoAP(
        EvalCopy(model),
        val,
        ground_truth(val),
        lambda epoch: True,
        listeners=[KeepBest(str(tmp_path))],
    )
    callback.set_model(model)
    callback.set_params({"epochs": 1})
    callback.on_train_begin()
    assert callback.eval_copy.model is not model
    model.get_layer("conv_1").kernel.assign(np.ones_like(model.get_layer("conv_1").kernel))
    logs = {}
    callback.on_epoch_end(0, logs)
    np.testing.assert_array_equal(callback.eval_copy.model.get_layer("conv_1").kernel, 1.0)
    assert 0.0 <= logs["AP"] <= 1.0 and (tmp_path / "best.keras").exists()


def test_learning_rate_burn_in_then_cosine():
    schedule = DarknetSchedule(
        base_lr=1.0, total_steps=110, warmup_steps=10, final_fraction=0.0, power=2
    )
    assert float(schedule(0)) == pytest.approx((1 / 10) ** 2)
    assert float(schedule(9)) == pytest.approx(1.0)
    assert float(schedule(60)) == pytest.approx(0.5)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)
    # Half the wall-clock budget spent at step 10 -> already half-way down the cosine.
    schedule.time_fraction.assign(0.5)
    assert float(schedule(10)) == pytest.approx(0.5)


def test_darknet_burn_in_and_step_decay():
    schedule = DarknetSchedule(
        base_lr=0.001,
        total_steps=1000,
        warmup_steps=100,
        schedule="steps",
        decay_steps=[700, 400],
        factor=0.1,
    )
    assert float(schedule(49)) == pytest.approx(0.001 * 0.5**4)  # darknet: (step/burn_in)^4
    assert float(schedule(99)) == pytest.approx(0.001)
    assert float(schedule(399)) == pytest.approx(0.001)
    assert float(schedule(400)) == pytest.approx(0.0001)
    assert float(schedule(700)) == pytest.approx(0.00001)
    constant = DarknetSchedule(base_lr=0.01, total_steps=1000, warmup_steps=0, schedule="constant")
    constant.time_fraction.assign(0.9)
    assert float(constant(999)) == pytest.approx(0.01)
    assert learning_rate_at(999, base_lr=0.01, total_steps=1000, warmup_steps=0) < 0.01


class Calls(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.batches = [*getattr(self, "batches", []), batch]


def _toy(steps_per_execution: int) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", loss="mse", steps_per_execution=steps_per_execution)
    return model


def test_batch_callbacks_run_once_per_execution_and_the_guard_names_its_steps():
    x = np.ones((8, 2), np.float32)
    calls = Calls()
    _toy(4).fit(x, x[:, :1], batch_size=1, epochs=1, verbose=0, callbacks=[calls])
    assert calls.batches == [3, 7]  # Keras passes each execution's last step

    class Poison(keras.callbacks.Callback):  # weights NaN before the second execution
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3:
                kernel = self.model.layers[0].kernel
                kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    with pytest.raises(NonFiniteLoss, match=r"epoch 1, steps 5-8;"):
        _toy(4).fit(
            x, x[:, :1], batch_size=1, epochs=1, verbose=0, callbacks=[Poison(), NonFiniteGuard()]
        )


def test_atomic_files_get_the_usual_permissions(tmp_path):
    from detector.utils.atomic import atomic_write_text

    atomic_write_text(str(tmp_path / "x.json"), "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask
