import json
import os

import keras
import numpy as np
import pytest

from detector.checkpoints import BestCocoAP, EvalCopy
from detector.data.coco import ground_truth
from detector.data.spec import load_dataset
from detector.model import build_inference_model
from detector.schedule import LearningRateCallback


def make_callback(tiny_spec, run_dir, aps):
    val = load_dataset(str(tiny_spec), "val")
    model = build_inference_model(len(val.names), [[1, 1], [2, 2]], "tiny", 0.25, 64, val.names)
    callback = BestCocoAP(EvalCopy(model), val, ground_truth(val), str(run_dir), lambda epoch: True)
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
    return callback, model


def test_saves_only_on_improvement(tiny_spec, tmp_path):
    callback, model = make_callback(tiny_spec, tmp_path, [0.1, 0.3, 0.2, 0.3, 0.5])
    best_epochs = []
    for epoch in range(5):
        logs = {}
        callback.on_epoch_end(epoch, logs)
        best_epochs.append(json.loads((tmp_path / "best.json").read_text())["epoch"])
        assert "AP" in logs
    assert best_epochs == [1, 2, 2, 2, 5]
    assert callback.best_ap == 0.5
    loaded = keras.models.load_model(str(tmp_path / "best.keras"), safe_mode=True)
    assert loaded.get_layer("yolo_head").class_names == model.get_layer("yolo_head").class_names


def test_failed_save_leaves_previous_checkpoint_and_no_temp_file(tiny_spec, tmp_path):
    callback, _ = make_callback(tiny_spec, tmp_path, [0.1, 0.4])
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
        EvalCopy(model), val, ground_truth(val), str(tmp_path), lambda epoch: True
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
    schedule = LearningRateCallback(
        base_lr=1.0, total_steps=110, warmup_steps=10, final_fraction=0.0, power=2
    )
    assert schedule.lr_at(0) == pytest.approx((1 / 10) ** 2)
    assert schedule.lr_at(9) == pytest.approx(1.0)
    assert schedule.lr_at(60) == pytest.approx(0.5)
    assert schedule.lr_at(110) == pytest.approx(0.0)
    # Half the wall-clock budget spent at step 10 -> already half-way down the cosine.
    assert schedule.lr_at(10, time_fraction=0.5) == pytest.approx(0.5)


def test_darknet_burn_in_and_step_decay():
    schedule = LearningRateCallback(
        base_lr=0.001,
        total_steps=1000,
        warmup_steps=100,
        schedule="steps",
        decay_steps=[700, 400],
        factor=0.1,
    )
    assert schedule.lr_at(49) == pytest.approx(0.001 * 0.5**4)  # darknet: (step/burn_in)^4
    assert schedule.lr_at(99) == pytest.approx(0.001)
    assert schedule.lr_at(399) == pytest.approx(0.001)
    assert schedule.lr_at(400) == pytest.approx(0.0001)
    assert schedule.lr_at(700) == pytest.approx(0.00001)
    constant = LearningRateCallback(
        base_lr=0.01, total_steps=1000, warmup_steps=0, schedule="constant"
    )
    assert constant.lr_at(999, time_fraction=0.9) == 0.01


def test_atomic_files_get_the_usual_permissions(tmp_path):
    from detector.io import atomic_write_text

    atomic_write_text(str(tmp_path / "x.json"), "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask
