"""``eval.async``: evaluating weight snapshots in a worker thread while training goes on."""

import json
import threading

import keras
import numpy as np
import pytest

from detector.config.schema import load_config, save_config
from detector.data.coco import ground_truth
from detector.data.spec import load_dataset
from detector.engine.callbacks.best import KeepBest
from detector.engine.callbacks.coco_ap import BestCocoAP
from detector.engine.callbacks.early_stop import EarlyStop
from detector.engine.eval_copy import EvalCopy
from detector.evaluation.coco import STAT_NAMES
from detector.model.network import build_inference_model


def test_eval_async_is_the_yaml_key_and_round_trips(tmp_path):
    cfg = load_config(overrides=["eval.async=true"])
    assert cfg.eval.async_ is True and load_config().eval.async_ is False
    save_config(cfg, tmp_path / "config.yaml")
    assert "async: true" in (tmp_path / "config.yaml").read_text()
    assert load_config(tmp_path / "config.yaml").eval.async_ is True
    with pytest.raises(ValueError, match="did you mean 'eval.async'"):
        load_config(overrides=["eval.asynk=true"])


class Rows(keras.callbacks.Callback):
    """Records the (epoch, AP) pairs a logger receives, in order."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append((epoch, logs["AP"]))


def background_callback(tiny_spec, run_dir, is_eval_epoch=lambda epoch: True, patience=0):
    val = load_dataset(str(tiny_spec), "val")
    model = build_inference_model(len(val.names), [[1, 1]], "tiny", 0.25, 64, val.names)
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    callback = BestCocoAP(
        EvalCopy(model),
        val,
        ground_truth(val),
        is_eval_epoch,
        listeners=[KeepBest(str(run_dir)), EarlyStop(patience)],
        background=True,
    )
    rows = Rows()
    callback.late_logs.callbacks.append(rows)
    for c in (callback, callback.late_logs):
        c.set_model(model)
        c.set_params({"epochs": 4})
        c.on_train_begin()
    return callback, model, rows


def scripted(aps):
    """A `_metrics` giving these APs in turn (everything else 0)."""
    values = iter(aps)
    return lambda model, predict_fn, curves: {
        **dict.fromkeys(STAT_NAMES, 0.0),
        "AP": next(values),
        "per_class": {},
    }


def end_epoch(callback, epoch):
    logs = {"loss": 1.0}
    callback.on_epoch_end(epoch, logs)
    callback.late_logs.on_epoch_end(epoch, logs)
    return logs


def test_rows_wait_for_their_own_epochs_ap(tiny_spec, tmp_path):
    callback, _, rows = background_callback(tiny_spec, tmp_path, lambda epoch: epoch % 2 == 0)
    callback._metrics = scripted([0.2, 0.1])
    logs = end_epoch(callback, 0)  # not evaluated: goes through at once
    assert "AP" not in logs and len(rows.rows) == 1 and np.isnan(rows.rows[0][1])
    end_epoch(callback, 1)  # evaluated in the background: its row waits
    assert len(rows.rows) == 1
    end_epoch(callback, 2)  # epoch 2's evaluation is collected first; 3 (not evaluated) waits
    assert rows.rows[1] == (1, 0.2)
    end_epoch(callback, 3)  # the last epoch is always evaluated
    callback.on_train_end()
    callback.late_logs.on_train_end()
    assert [(e, ap) for e, ap in rows.rows[1:]] == [(1, 0.2), (2, rows.rows[2][1]), (3, 0.1)]
    assert np.isnan(rows.rows[2][1])
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 2
    assert callback.listeners[0].best_ap == 0.2


def test_snapshot_is_taken_at_the_epoch_end(tiny_spec, tmp_path):
    callback, model, _ = background_callback(tiny_spec, tmp_path)
    before = [w.copy() for w in model.get_weights()]
    started, release, seen = threading.Event(), threading.Event(), {}

    def slow_metrics(eval_model, predict_fn, curves):
        started.set()
        release.wait(30)
        seen["weights"] = eval_model.get_weights()
        return {**dict.fromkeys(STAT_NAMES, 0.0), "per_class": {}}

    callback._metrics = slow_metrics
    end_epoch(callback, 0)
    assert started.wait(30)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    model.fit(x, model.predict(x, verbose=0) + 1.0, epochs=1, verbose=0)  # later steps
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), before, strict=True))
    release.set()
    callback.collect()
    for got, want in zip(seen["weights"], before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert callback.logged[0]["AP"] == 0.0


def test_async_and_sync_give_the_same_aps_and_best_epoch(tiny_spec, tmp_path):
    """One training, both callbacks on it: the background evaluations of the snapshots
    equal the epoch-end evaluations (training itself is not bit-reproducible across runs
    on this CPU, so two separate runs could not be compared)."""
    from detector.data.pipeline import TrainInput, make_train_dataset
    from detector.model.loss import YoloLoss, identity_loss
    from detector.model.network import build_training_model

    keras.utils.set_random_seed(0)
    train = load_dataset(str(tiny_spec), "train")
    anchors = [[0.6, 0.6], [1.4, 1.4]]
    model = build_inference_model(len(train.names), anchors, "tiny", 0.25, 64, train.names)
    loss = YoloLoss(anchors, len(train.names), warmup_images=0)
    training = build_training_model(model, loss, max_boxes=8)
    training.compile(keras.optimizers.Adam(3e-3, use_ema=True, ema_momentum=0.8), identity_loss)
    data = make_train_dataset(TrainInput(train.records, 64, anchors, 8, 8, None))
    truth = ground_truth(train)  # the learnt images: AP moves from epoch to epoch
    dirs = [tmp_path / "sync", tmp_path / "async"]
    for d in dirs:
        d.mkdir()
    keep = [KeepBest(str(d)) for d in dirs]
    sync = BestCocoAP(EvalCopy(model), train, truth, lambda epoch: True, listeners=[keep[0]])
    background = BestCocoAP(
        EvalCopy(model), train, truth, lambda epoch: True, listeners=[keep[1]], background=True
    )
    sync_rows, async_rows = Rows(), Rows()
    background.late_logs.callbacks.append(async_rows)
    callbacks = [sync, sync_rows, background, background.late_logs]
    training.fit(data, steps_per_epoch=15, epochs=4, verbose=0, callbacks=callbacks)
    assert async_rows.rows == sync_rows.rows and len(sync_rows.rows) == 4
    assert len({ap for _, ap in sync_rows.rows}) > 1 and keep[0].best_ap > 0
    best = [json.loads((d / "best.json").read_text()) for d in dirs]
    assert best[0] == best[1] and keep[1].best_ap == keep[0].best_ap


def test_an_interrupted_run_lands_the_evaluation_in_flight(tiny_spec, tmp_path):
    """Ctrl-C during the epoch after an evaluated one: training.fit waits for that
    evaluation on the way out, so its row reaches the loggers and its best is saved."""
    import types

    from detector.engine.build import RunCallbacks
    from detector.engine.run import fit

    callback, model, rows = background_callback(tiny_spec, tmp_path)
    callback._metrics = scripted([0.3])
    end_epoch(callback, 0)  # evaluated in the background, nothing logged yet
    assert rows.rows == [] and callback.pending is not None

    class Interrupted:
        def fit(self, *args, **kwargs):
            raise KeyboardInterrupt

    out = RunCallbacks(callbacks=[], budget=None, best=callback)
    with pytest.raises(KeyboardInterrupt):
        fit(Interrupted(), None, 4, types.SimpleNamespace(steps=1), out)
    assert rows.rows == [(0, 0.3)] and callback.pending is None
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 1
