"""The config boundary: the run's callbacks (membership, order, wiring) and the run plan,
checked without training."""

import contextlib
import dataclasses
import json
import types

import keras
import pytest
import yaml

from detector.config.schema import LossConfig, load_config
from detector.data.spec import load_dataset
from detector.engine.build import make_callbacks, make_loss, make_schedule
from detector.engine.callbacks.checkpoints import SaveLast
from detector.engine.callbacks.coco_ap import BestCocoAP
from detector.engine.callbacks.distribute import ChiefOnly, SyncStop
from detector.engine.callbacks.guards import NonFiniteGuard
from detector.engine.callbacks.listeners import Evaluation
from detector.engine.callbacks.logs import LateLogs, MetricsCSV
from detector.engine.callbacks.mosaic import CloseMosaic
from detector.engine.callbacks.schedule import LearningRateCallback, TimeBudget
from detector.engine.callbacks.state import RunState
from detector.engine.callbacks.user import Callback
from detector.engine.class_weights import auto_class_weights, class_counts
from detector.engine.distribute import Cluster
from detector.engine.plan import RunPlan
from detector.engine.run import best_so_far, prepare_run
from detector.evaluation.coco import STAT_NAMES

CLUSTERS = {
    "single": Cluster("none", None),
    "mirrored": Cluster("mirrored", None, num_replicas=2),
    "chief": Cluster("multi_worker", None, num_replicas=2, num_workers=2, worker_index=0),
    "worker": Cluster("multi_worker", None, num_replicas=2, num_workers=2, worker_index=1),
}
CHIEF_OWN = [BestCocoAP, SaveLast, MetricsCSV]
HEAD = [NonFiniteGuard, LearningRateCallback, TimeBudget, CloseMosaic]  # the defaults' run
TB = keras.callbacks.TensorBoard
EXPECTED = {
    "single": [*HEAD, *CHIEF_OWN, TB, RunState],
    "mirrored": [*HEAD, *CHIEF_OWN, TB, RunState],
    "chief": [*HEAD, ChiefOnly, TB, SyncStop, RunState],
    "worker": [*HEAD, TB, SyncStop, RunState],
}


def callbacks_for(kind, tmp_path, overrides=(), resume=False, user=None):
    cfg = load_config(overrides=list(overrides))
    write_dir = tmp_path / ("scratch" if kind == "worker" else "run")
    plan = RunPlan(
        cfg,
        str(tmp_path / "run"),
        str(write_dir),
        [[1, 1]],
        steps=10,
        lr=0.01,
        resume=resume,
        best_ap=0.25,
        stale=2,
    )
    # The evaluation copy is built lazily, so no model or data is needed to wire the list.
    out = make_callbacks(
        cfg,
        plan=plan,
        cluster=CLUSTERS[kind],
        inference=None,
        val=None,
        coco_gt=None,
        start=0.0,
        schedule=make_schedule(cfg.train, lr=plan.lr, steps=plan.steps),
        user=user,
    )
    return out, plan


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_callbacks_membership_and_order(kind, tmp_path):
    out, plan = callbacks_for(kind, tmp_path)
    assert [type(c) for c in out.callbacks] == EXPECTED[kind]
    assert out.budget is out.callbacks[2]
    assert out.budget.share is out.callbacks[1].schedule.time_fraction  # one schedule
    assert (out.budget.sync is not None) == (kind in ("chief", "worker"))
    assert (out.sync_stop is not None) == (kind in ("chief", "worker"))
    state = out.callbacks[-1]
    assert state.run_dir == plan.run_dir and state.backup_dir.startswith(plan.write_dir)
    tensorboard = next(c for c in out.callbacks if isinstance(c, TB))
    assert tensorboard.log_dir.startswith(plan.write_dir)


@pytest.mark.parametrize("kind", ["single", "chief"])
def test_best_and_last_share_one_evaluation_copy(kind, tmp_path):
    out, plan = callbacks_for(kind, tmp_path)
    own = out.chief_only.callbacks if out.chief_only else out.callbacks[len(HEAD) : len(HEAD) + 3]
    assert [type(c) for c in own] == CHIEF_OWN
    best, last, csv = own
    assert best is out.best and best.eval_copy is last.eval_copy
    assert out.keep_best.best_ap == plan.best_ap and out.keep_best in best.listeners
    assert csv.columns[:3] == ["epoch", "lr", "loss"] and "AP" in csv.columns


class Plain(keras.callbacks.Callback):
    pass


class Events(Callback):
    pass


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_user_callbacks_follow_the_metrics_csv_on_the_chief_only(kind, tmp_path):
    user = [Plain(), Events()]
    out, _ = callbacks_for(kind, tmp_path, user=user)
    if kind in ("single", "mirrored"):
        assert out.callbacks[len(HEAD) + 3 : len(HEAD) + 5] == user
        assert [type(c) for c in out.callbacks] == [*HEAD, *CHIEF_OWN, Plain, Events, TB, RunState]
    elif kind == "chief":
        assert out.chief_only.callbacks[3:] == user  # wrapped with the chief's own
        assert [type(c) for c in out.chief_only.callbacks[:3]] == CHIEF_OWN
    else:
        assert out.events is None and not any(c in user for c in out.callbacks)
        return
    assert out.events.callbacks == user[1:]  # the detector events: detector.Callback only
    assert out.best.listeners[-1] is out.events  # after EarlyStop: is_best and the stop known
    last = next(
        c
        for c in [*out.callbacks, *getattr(out.chief_only, "callbacks", [])]
        if isinstance(c, SaveLast)
    )
    assert last.on_saved == out.events.on_checkpoint


def test_with_eval_async_user_callbacks_wait_with_the_loggers(tmp_path):
    user = [Plain()]
    out, _ = callbacks_for("single", tmp_path, ["eval.async=true"], user=user)
    assert [type(c) for c in out.callbacks] == [*HEAD, BestCocoAP, SaveLast, LateLogs, RunState]
    late = out.callbacks[len(HEAD) + 2]
    assert late is out.best.late_logs
    assert [type(c) for c in late.callbacks] == [MetricsCSV, Plain, TB] and late.callbacks[
        1
    ] is user[0]
    assert out.events.callbacks == [] and out.callbacks[len(HEAD) + 1].on_saved is None


def test_train_callbacks_entries_are_checked_when_the_config_loads():
    good = "train.callbacks=['a.b:C', {class: 'x:Y', args: {n: 1}}, {class: 'x:Z'}]"
    assert load_config(overrides=[good]).train.callbacks[1] == {"class": "x:Y", "args": {"n": 1}}
    for bad in ["['a.b.C']", "['a:']", "[{class: 'x:Y', arg: {}}]", "[{args: {}}]", "[3]", "'x:Y'"]:
        with pytest.raises(ValueError, match="'train.callbacks'"):
            load_config(overrides=[f"train.callbacks={bad}"])


def test_worker_state_extras_and_chief_failure(tmp_path):
    out, _ = callbacks_for("worker", tmp_path)
    assert out.best is None and out.state_extras()["best_ap"] == -1.0
    assert not out.chief_failed()
    chief, _ = callbacks_for("chief", tmp_path)
    assert chief.state_extras()["best_ap"] == 0.25
    assert chief.state_extras()["stale"] == 2  # train.patience counts on after a resume
    chief.chief_only.error = RuntimeError("boom")
    assert chief.chief_failed()


def test_schedule_is_wired_from_the_plan(tmp_path):
    overrides = [
        "train.schedule=steps",
        "train.steps=[2.5]",
        "train.epochs=4",
        "train.warmup_epochs=1",
        "train.step_factor=0.5",
    ]
    out, plan = callbacks_for("single", tmp_path, overrides, resume=True)
    lr = out.callbacks[1].schedule
    assert float(lr(9)) == pytest.approx(plan.lr)  # burn-in is 1 epoch = 10 steps
    assert float(lr(24)) == pytest.approx(plan.lr)
    assert float(lr(25)) == pytest.approx(plan.lr * 0.5)  # epoch 2.5 = step 25
    assert out.callbacks[-1].restore


def test_prepare_run_leaves_the_config_alone(tiny_spec, tmp_path):
    cfg = load_config(
        overrides=[
            f"data.spec={tiny_spec}",
            f"train.run_dir={tmp_path / 'r'}",
            "model.input_size=64",
            "data.multiscale=[]",
            "data.batch_size=4",
        ]
    )
    before = dataclasses.asdict(cfg)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x").write_text("used")
    train = load_dataset(str(tiny_spec), "train")
    with contextlib.ExitStack() as locks:
        plan = prepare_run(cfg, False, CLUSTERS["single"], train, locks=locks)
    assert dataclasses.asdict(cfg) == before and cfg.model.anchors == "auto"
    assert plan.run_dir == f"{tmp_path / 'r'}-2" and plan.steps == 24 // 4
    assert len(plan.anchors) == cfg.model.num_anchors
    saved = yaml.safe_load((tmp_path / "r-2" / "config.yaml").read_text())
    assert saved["model"]["anchors"] == plan.anchors
    assert saved["train"]["run_dir"] == plan.run_dir


def test_patience_counts_on_from_the_resumed_stale_evaluations(tmp_path):
    """A run resumed 2 evaluations after its best, with patience 3, stops at the next
    evaluation without a better AP (not 3 evaluations later)."""
    out, _ = callbacks_for("single", tmp_path, ["train.patience=3"])
    best, stop = out.best, out.early_stop
    best.set_model(types.SimpleNamespace(stop_training=False))  # reaches its parts
    assert stop.stale == 2 and stop in best.listeners
    stop.on_landed(Evaluation(5, dict.fromkeys(STAT_NAMES, 0.1), {}, is_best=False))
    assert best.model.stop_training and stop.stale == 3


@pytest.mark.parametrize(
    "meta, best_json, expected",
    [
        (None, None, {"best_ap": -1.0, "stale": 0}),
        ({"best_ap": 0.3, "stale": 4}, None, {"best_ap": 0.3, "stale": 4}),
        ({"best_ap": 0.3, "stale": 4}, 0.2, {"best_ap": 0.3, "stale": 4}),
        # a best saved after the last state: its AP, and no evaluation since
        ({"best_ap": 0.3, "stale": 4}, 0.35, {"best_ap": 0.35, "stale": 0}),
        ({"best_ap": 0.3}, None, {"best_ap": 0.3, "stale": 0}),  # a state from before
    ],
)
def test_best_so_far_of_a_resumed_run(tmp_path, meta, best_json, expected):
    if best_json is not None:
        (tmp_path / "best.json").write_text(json.dumps({"AP": best_json}))
    assert best_so_far(str(tmp_path), meta, resume=meta is not None) == expected


def _tiny_run_config(tiny_spec, run_dir, *more):
    return load_config(
        overrides=[
            f"data.spec={tiny_spec}",
            f"train.run_dir={run_dir}",
            "model.input_size=64",
            "data.multiscale=[]",
            "data.batch_size=4",
            *more,
        ]
    )


def test_prepare_run_resolves_auto_class_weights_into_config_yaml(tiny_spec, tmp_path, capsys):
    cfg = _tiny_run_config(tiny_spec, tmp_path / "r", "loss.class_weights=auto")
    train = load_dataset(str(tiny_spec), "train")
    with contextlib.ExitStack() as locks:
        plan = prepare_run(cfg, False, CLUSTERS["single"], train, locks=locks)
    expected = auto_class_weights(class_counts(train.records, len(train.names))).tolist()
    assert cfg.loss.class_weights == "auto" and plan.config.loss.class_weights == expected
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["loss"]["class_weights"] == expected  # a resume trains with the same ones
    assert "loss.class_weights auto (" in capsys.readouterr().out
    layer = make_loss(plan.config.loss, anchors=plan.anchors, num_classes=len(train.names))
    assert layer.class_weights == expected
    assert make_loss(LossConfig(), anchors=plan.anchors, num_classes=3).class_weights is None


def test_prepare_run_refuses_class_weights_of_the_wrong_length_before_writing(tiny_spec, tmp_path):
    cfg = _tiny_run_config(tiny_spec, tmp_path / "r", "loss.class_weights=[1, 2]")
    train = load_dataset(str(tiny_spec), "train")
    with pytest.raises(ValueError, match=r"^loss.class_weights: 2 weights for the 4 classes"):
        with contextlib.ExitStack() as locks:
            prepare_run(cfg, False, CLUSTERS["single"], train, locks=locks)
    assert not (tmp_path / "r").exists()
