"""Resume, kill-safety, the NaN guard, precision modes: the run-state machinery."""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import detector.model.layers  # noqa: F401  (registers the custom layers for load_model)
from detector.config.schema import load_config
from detector.engine.callbacks.guards import NonFiniteGuard, NonFiniteLoss
from detector.engine.callbacks.schedule import LearningRateCallback
from detector.engine.callbacks.state import RunState
from detector.engine.run import run
from detector.engine.schedule import DarknetSchedule, learning_rate_at
from detector.engine.state import resolve, truncate_csv

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "model.variant=tiny",
    "model.width=0.125",
    "model.input_size=64",
    "data.multiscale=[]",
    "data.batch_size=8",
    "model.num_anchors=2",
    "train.max_minutes=0",
]


def _toy_model(ema: bool = True) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.01, use_ema=ema, ema_momentum=0.9), loss="mse")
    return model


DATA = (
    np.random.default_rng(0).normal(size=(32, 4)),
    np.random.default_rng(1).normal(size=(32, 1)),
)


class Snapshot(keras.callbacks.Callback):
    """Copies every optimiser and model variable at an epoch boundary."""

    def __init__(self, at_begin: bool):
        super().__init__()
        self.at_begin, self.values = at_begin, {}

    def _take(self, epoch):
        state = self.model.optimizer.variables + self.model.weights
        # by position: layer names differ between two model instances
        self.values[epoch] = {
            f"{i}:{v.name.rsplit('_', 1)[-1]}": v.numpy() for i, v in enumerate(state)
        }

    def on_epoch_begin(self, epoch, logs=None):
        if self.at_begin:
            self._take(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if not self.at_begin:
            self._take(epoch + 1)


class Stop(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def test_resume_restores_weights_optimiser_and_ema_exactly(tmp_path):
    first, after = _toy_model(), Snapshot(at_begin=False)
    with pytest.raises(KeyboardInterrupt):
        first.fit(
            *DATA,
            batch_size=8,
            epochs=4,
            verbose=0,
            callbacks=[after, RunState(str(tmp_path)), Stop()],
        )
    assert resolve(str(tmp_path))["epoch"] == 2
    second, before = _toy_model(), Snapshot(at_begin=True)
    history = second.fit(
        *DATA, batch_size=8, epochs=4, verbose=0, callbacks=[RunState(str(tmp_path)), before]
    )
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    saved, restored = after.values[2], before.values[2]
    assert any("average" in k for k in saved) and any("momentum" in k for k in saved), saved
    assert saved.keys() == restored.keys()
    for name in saved:
        np.testing.assert_array_equal(saved[name], restored[name], err_msg=name)
    assert int(restored["0:iteration"]) == 8  # 2 epochs x 4 steps


class LoggedLr(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.lrs = {**getattr(self, "lrs", {}), epoch: logs["lr"]}


def _scheduled_fit(run_dir, epochs=4, stop=None, optimizer_lr=None):
    """The toy model under an in-graph cosine schedule (4 steps per epoch): the logged
    lr per epoch and the final weights."""
    keras.utils.set_random_seed(0)
    schedule = DarknetSchedule(0.05, total_steps=16, warmup_steps=3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(optimizer_lr or schedule), loss="mse")
    logged = LoggedLr()
    extra = [Stop()] if stop else []
    model.fit(
        *DATA,
        batch_size=8,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[LearningRateCallback(schedule), logged, RunState(str(run_dir)), *extra],
    )
    return logged.lrs, model.get_weights()


def test_resumed_schedule_gives_the_same_lr_and_weights(tmp_path):
    whole_lrs, whole_weights = _scheduled_fit(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        _scheduled_fit(tmp_path / "cut", stop=True)
    resumed_lrs, resumed_weights = _scheduled_fit(tmp_path / "cut")
    assert sorted(resumed_lrs) == [2, 3]
    for epoch in (2, 3):  # the lr of each epoch's last step: steps 11 and 15
        assert resumed_lrs[epoch] == whole_lrs[epoch]
        assert resumed_lrs[epoch] == pytest.approx(
            learning_rate_at(4 * epoch + 3, base_lr=0.05, total_steps=16, warmup_steps=3)
        )
    for got, want in zip(resumed_weights, whole_weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_state_whose_optimiser_does_not_restore_is_refused(tmp_path):
    """A state saved with a fixed-lr optimiser (one more variable: the lr) loads into the
    scheduled one with only a Keras warning and the step back at 0: refused, not resumed."""
    with pytest.raises(KeyboardInterrupt):
        _scheduled_fit(tmp_path, stop=True, optimizer_lr=0.05)
    with pytest.raises(ValueError, match="did not restore the optimiser"):
        _scheduled_fit(tmp_path)


def test_state_of_another_architecture_is_a_value_error_naming_it(tmp_path):
    """Not Keras' "N objects could not be loaded": the file and what to do."""
    _toy_model().fit(*DATA, batch_size=8, epochs=1, verbose=0, callbacks=[RunState(str(tmp_path))])
    keras.utils.set_random_seed(0)
    wider = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dense(1)])
    wider.compile(keras.optimizers.Adam(0.01), loss="mse")
    weights = os.path.join(str(tmp_path), "state", "latest.weights.h5")
    with pytest.raises(ValueError, match=f"{weights} does not fit the model built from the run"):
        wider.fit(*DATA, batch_size=8, epochs=2, verbose=0, callbacks=[RunState(str(tmp_path))])


def test_kill_between_the_two_renames_falls_back_to_the_previous_state(tmp_path):
    model = _toy_model()
    state = RunState(str(tmp_path))
    model.fit(*DATA, batch_size=8, epochs=2, verbose=0, callbacks=[state])
    folder = tmp_path / "state"
    assert resolve(str(tmp_path))["epoch"] == 2
    # A kill after the new weights were renamed in but before the metadata was: the
    # weights no longer match the metadata -> the previous pair (epoch 1) is used.
    weights = folder / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    meta = resolve(str(tmp_path))
    assert meta["epoch"] == 1
    fresh = _toy_model()
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(str(weights))  # the restored latest pair loads
    # A half-written weights file (a kill inside save_weights) never becomes the latest:
    # it is written under a temporary name; no temporary file survives a normal save.
    assert not [p for p in os.listdir(folder) if p.startswith(".")]


def test_failure_inside_a_save_leaves_the_previous_state(tmp_path, monkeypatch):
    model = _toy_model()
    model.fit(*DATA, batch_size=8, epochs=1, verbose=0, callbacks=[RunState(str(tmp_path))])
    before = (tmp_path / "state" / "latest.weights.h5").read_bytes()

    def broken(self, filepath, overwrite=True):
        Path(filepath).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save_weights", broken)
    with pytest.raises(OSError, match="disk full"):
        model.fit(
            *DATA,
            batch_size=8,
            epochs=2,
            initial_epoch=1,
            verbose=0,
            callbacks=[RunState(str(tmp_path))],
        )
    assert (tmp_path / "state" / "latest.weights.h5").read_bytes() == before
    assert resolve(str(tmp_path))["epoch"] == 1


def test_truncate_csv_keeps_complete_rows_up_to_the_epoch(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,loss\n1,0.5\n2,0.4\n3,0.3\n4,0.")
    truncate_csv(str(path), 2)
    assert path.read_text().splitlines() == ["epoch,loss", "1,0.5", "2,0.4"]
    truncate_csv(str(path), 5)  # the cut row 4 is gone, complete rows stay
    assert path.read_text().splitlines() == ["epoch,loss", "1,0.5", "2,0.4"]


def test_nan_guard_stops_before_the_bad_step_reaches_the_state(tmp_path):
    model = _toy_model(ema=False)

    class Poison(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if self.params and batch == 2 and self.epoch == 1:
                self.model.layers[0].kernel.assign(np.full((4, 3), np.nan, "float32"))

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    with pytest.raises(NonFiniteLoss, match=r"epoch 2, step 3.*learning rate"):
        model.fit(
            *DATA,
            batch_size=8,
            epochs=3,
            verbose=0,
            callbacks=[Poison(), NonFiniteGuard(), RunState(str(tmp_path))],
        )
    assert resolve(str(tmp_path))["epoch"] == 1
    fresh = _toy_model(ema=False)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(str(tmp_path / "state" / "latest.weights.h5"))
    assert all(np.isfinite(np.asarray(w)).all() for w in fresh.weights)


@pytest.mark.parametrize(
    "mode",
    [
        ["train.precision=mixed_float16"],
        ["train.precision=mixed_bfloat16"],
        ["train.jit_compile=true", "train.ema_momentum=0.9"],
    ],
)
def test_precision_and_xla_modes_train_an_epoch(tiny_spec, tmp_path, mode, monkeypatch):
    if "train.precision=mixed_float16" in mode:  # refused without a GPU; the path is the same
        import detector.engine.run

        monkeypatch.setattr(detector.engine.run, "check_precision", lambda precision: None)
    cfg = load_config(
        overrides=[
            *TINY,
            f"data.spec={tiny_spec}",
            "train.epochs=1",
            f"train.run_dir={tmp_path / 'run'}",
            *mode,
        ]
    )
    try:
        metrics = run(cfg).best_metrics
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert 0.0 <= metrics["AP"] <= 1.0
    best = keras.models.load_model(tmp_path / "run" / "best.keras", safe_mode=True)
    assert best.get_layer("conv_1").dtype_policy.name == "float32"


def _train(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )


def _sets():
    return [x for item in TINY for x in ("--set", item)]


def test_two_epochs_resumed_to_three_log_each_epoch_once(tiny_spec, tmp_path):
    run_dir = tmp_path / "run"
    proc = _train("--data", str(tiny_spec), "--epochs", "2", "--run-dir", str(run_dir), *_sets())
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    proc = _train("--resume", str(run_dir), "--epochs", "3")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "resuming" in out and "after epoch 2" in out
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert {"coord", "obj", "noobj", "cls", "lr", "AP"} <= set(rows[0])
    assert all(r["AP"] not in ("", "nan") for r in rows)
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert list((run_dir / "tensorboard" / "images").glob("events.out.tfevents.*"))
    for png in ("curves.png", "pr_curve.png"):
        assert (run_dir / png).stat().st_size > 10_000, png
    assert json.loads((run_dir / "state" / "training_metadata.json").read_text())["epoch"] == 3
    keras.models.load_model(run_dir / "best.keras", safe_mode=True)
    proc = _train("--resume", str(run_dir), "--epochs", "3")  # finished: nothing to do
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "nothing to do" in out
    # a run stopped during its final report: the resume writes the report, trains nothing
    (run_dir / "val" / "report.json").unlink()
    proc = _train("--resume", str(run_dir), "--epochs", "3")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "final report is missing" in out, out[-3000:]
    assert json.loads((run_dir / "val" / "report.json").read_text())["AP"] >= 0.0
    assert json.loads((run_dir / "state" / "training_metadata.json").read_text())["epoch"] == 3


def _kill_and_resume(tiny_spec, tmp_path, moments: list[float], epochs: int = 4) -> Path:
    """Starts a run, SIGKILLs it after each delay in `moments` (seconds after start,
    resuming each time), then lets it finish."""
    run_dir = tmp_path / "run"
    args = ["--data", str(tiny_spec), "--epochs", str(epochs), "--run-dir", str(run_dir), *_sets()]
    for delay in [*moments, None]:
        if delay is None:
            final = _train(*args)
            out, _ = final.communicate(timeout=900)
            assert final.returncode == 0, out[-3000:]
            assert "nothing to do" not in out  # the kills all landed before the end
            break
        proc = subprocess.Popen(
            [sys.executable, "train.py", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        state = resolve(str(run_dir))
        print(f"killed after {delay:.1f} s: state at epoch {state and state['epoch']}")
        args = ["--resume", str(run_dir)]
    return run_dir


def test_sigkill_after_the_first_epoch_then_resume_finishes(tiny_spec, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--data", str(tiny_spec), "--epochs", "3", "--run-dir", str(run_dir), *_sets()]
    proc = _train(*args, start_new_session=True)
    deadline = time.monotonic() + 300
    while resolve(str(run_dir)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc = _train("--resume", str(run_dir))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    with open(run_dir / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]
    keras.models.load_model(run_dir / "best.keras", safe_mode=True)


@pytest.mark.slow
def test_three_random_sigkills_then_the_run_finishes(tiny_spec, tmp_path):
    rng = np.random.default_rng(int(time.time()))
    run_dir = _kill_and_resume(tiny_spec, tmp_path, list(rng.uniform(6, 14, 3)), epochs=60)
    with open(run_dir / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == [str(e) for e in range(1, 61)]
    keras.models.load_model(run_dir / "best.keras", safe_mode=True)


def test_float16_without_a_gpu_is_refused_before_training(tiny_spec, tmp_path):
    overrides = [*TINY, f"data.spec={tiny_spec}", f"train.run_dir={tmp_path / 'run'}"]
    cfg = load_config(overrides=[*overrides, "train.precision=mixed_float16"])
    with pytest.raises(ValueError, match="train.precision: mixed_float16 needs a GPU"):
        run(cfg)
    assert not (tmp_path / "run").exists()
