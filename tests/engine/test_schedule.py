"""The in-graph learning-rate schedule against its plain-Python reference, the time budget
that feeds it, and the lr the optimiser actually applies at each step."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from detector.config.schema import load_config
from detector.engine.build import make_schedule
from detector.engine.callbacks.schedule import LearningRateCallback, TimeBudget
from detector.engine.schedule import DarknetSchedule, learning_rate_at

SCHEDULES = {
    "cosine": {"base_lr": 0.004, "total_steps": 500, "warmup_steps": 40, "final_fraction": 0.01},
    "steps": {
        "base_lr": 0.001,
        "total_steps": 1000,
        "warmup_steps": 100,
        "schedule": "steps",
        "decay_steps": [700, 400],
        "factor": 0.1,
    },
    "constant": {"base_lr": 0.02, "total_steps": 50, "warmup_steps": 7, "schedule": "constant"},
    "no_burn_in": {"base_lr": 1.0, "total_steps": 110, "warmup_steps": 0, "power": 2.0},
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_in_graph_schedule_equals_the_reference(name):
    kwargs = SCHEDULES[name]
    schedule = DarknetSchedule(**kwargs)
    steps = np.unique(np.r_[0:120, 120:1200:7, [399, 400, 699, 700, 5000]])
    compiled = tf.function(lambda s: schedule(s))  # as inside the train step
    for fraction in (0.0, 0.3, 0.75, 1.0, 1.7):
        schedule.time_fraction.assign(fraction)
        got = compiled(tf.constant(steps, tf.int64)).numpy()
        eager = keras.ops.convert_to_numpy(schedule(steps))
        want = [learning_rate_at(int(s), time_fraction=fraction, **kwargs) for s in steps]
        for values in (got, eager):
            np.testing.assert_allclose(values, want, rtol=3e-6, atol=1e-12, err_msg=f"{fraction}")
    assert got.min() >= 0 and np.isfinite(got).all()


def test_the_budget_only_moves_the_cosine():
    cosine = DarknetSchedule(**SCHEDULES["cosine"])
    steps = DarknetSchedule(**SCHEDULES["steps"])
    before = [float(s(100)) for s in (cosine, steps)]
    for s in (cosine, steps):
        s.time_fraction.assign(0.5)
    after = [float(s(100)) for s in (cosine, steps)]
    assert after[0] < before[0] and after[1] == before[1]
    cosine.time_fraction.assign(1.0)  # budget spent: the cosine's end, whatever the step
    assert float(cosine(41)) == pytest.approx(0.004 * 0.01, rel=1e-5)


def test_config_round_trip_and_registration():
    schedule = DarknetSchedule(**SCHEDULES["steps"])
    config = schedule.get_config()
    json.dumps(config)
    assert config["decay_steps"] == [400, 700]  # sorted
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(revived) is DarknetSchedule and revived.get_config() == config
    for step in (0, 99, 400, 900):
        assert float(revived(step)) == float(schedule(step))
    with pytest.raises(ValueError, match="train.schedule"):
        DarknetSchedule(1.0, 10, 1, schedule="linear")


def test_make_schedule_reads_the_config_and_refuses_a_partial_execution():
    cfg = load_config(
        overrides=["train.epochs=3", "train.warmup_epochs=0.5", "train.steps_per_execution=4"]
    )
    schedule = make_schedule(cfg.train, lr=0.5, steps=8)
    assert (schedule.total_steps, schedule.warmup_steps, schedule.base_lr) == (24, 4, 0.5)
    with pytest.raises(ValueError, match="train.steps_per_execution: 4 does not divide the 10"):
        make_schedule(cfg.train, lr=0.5, steps=10)


def _constant_gradient_model(schedule, steps_per_execution: int, jit: bool) -> keras.Model:
    """w (one weight, 0 at start) with loss = mean(x·w) on x = 1: the gradient is exactly 1
    at every step, so plain SGD leaves w = -(sum of the lrs applied so far)."""
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(
        keras.optimizers.SGD(schedule),
        loss=lambda y_true, y_pred: keras.ops.mean(y_pred),
        steps_per_execution=steps_per_execution,
        jit_compile=jit,
    )
    return model


@pytest.mark.parametrize("steps_per_execution, jit", [(1, False), (3, True)])
def test_the_optimiser_applies_the_schedule_at_every_step(steps_per_execution, jit):
    kwargs = {"base_lr": 0.1, "total_steps": 12, "warmup_steps": 4, "power": 2.0}
    schedule = DarknetSchedule(**kwargs)
    model = _constant_gradient_model(schedule, steps_per_execution, jit)
    budget = TimeBudget(0.0, share=schedule.time_fraction)  # no budget: never written

    class Lrs(LearningRateCallback):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            self.logged = [*getattr(self, "logged", []), logs["lr"]]

    logged = Lrs(schedule)
    x = np.ones((6, 1), np.float32)
    model.fit(x, x, batch_size=1, epochs=2, verbose=0, shuffle=False, callbacks=[budget, logged])
    # epoch 1 = steps 0..5, epoch 2 = steps 6..11
    want = [learning_rate_at(s, **kwargs) for s in range(12)]
    assert int(model.optimizer.iterations.numpy()) == 12
    kernel = float(model.layers[0].kernel.numpy()[0, 0])
    assert kernel == pytest.approx(-sum(want), rel=1e-5)
    assert logged.logged == pytest.approx([want[5], want[11]], rel=1e-6)


def test_time_budget_writes_the_share_every_n_batches():
    class Model:
        stop_training = False

    schedule = DarknetSchedule(**SCHEDULES["cosine"])
    budget = TimeBudget(1.0, spent_before=30.0, sync_every=4, share=schedule.time_fraction)
    budget.set_model(Model())
    budget.on_train_begin()  # a resumed run: half the budget spent already
    assert float(schedule.time_fraction.numpy()) == pytest.approx(0.5, abs=0.02)
    budget.spent_before = 45.0  # three quarters now, but not written before batch 4
    for batch in range(3):
        budget.on_train_batch_end(batch)
    assert float(schedule.time_fraction.numpy()) == pytest.approx(0.5, abs=0.02)
    budget.on_train_batch_end(3)
    assert float(schedule.time_fraction.numpy()) == pytest.approx(0.75, abs=0.02)
    budget.spent_before = 90.0  # over budget: stops at once, the share is capped at 1
    budget.on_train_batch_end(4)
    assert budget.stopped and budget.model.stop_training
    budget.on_epoch_end(0)
    assert float(schedule.time_fraction.numpy()) == 1.0


def test_train_refuses_a_partial_execution_before_writing_anything(tiny_spec, tmp_path, capsys):
    from detector.cli.train import train_main

    run_dir = tmp_path / "run"
    argv = ["--data", str(tiny_spec), "--run-dir", str(run_dir)]
    argv += ["--set", "data.batch_size=4", "--set", "train.steps_per_execution=4"]
    assert train_main(argv) == 2  # 24 images // 4 = 6 steps per epoch
    assert "train.steps_per_execution: 4 does not divide the 6 steps" in capsys.readouterr().err
    assert not run_dir.exists()
