"""The benchmark's arithmetic and wiring, never its timings: FLOP counting, ratios from
alternating rounds and their verdict, growth's arithmetic, and that the bench times the
pipeline ``train.py`` builds."""

import contextlib
import dataclasses
import json
import math
import subprocess
import sys

import keras
import numpy as np
import pytest

from detector.bench.core import bench_train_input, format_table, timed_configuration
from detector.bench.growth import cores_needed, per_image_growth, rss_drift
from detector.bench.rounds import TARGETS, alternate, figure, verdict
from detector.bench.step import conv_flops
from detector.config.schema import load_config
from detector.data.mosaic import MosaicSwitch
from detector.data.spec import load_dataset
from detector.engine.build import make_train_input
from detector.engine.distribute import Cluster
from detector.engine.run import prepare_run, resolve_devices
from detector.model.network import build_inference_model
from tests.helpers.data import TINY_MODEL, set_flags


def test_conv_flops_match_a_hand_count():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)  # 32x32 out
    x = keras.layers.MaxPooling2D(2)(x)  # no FLOPs counted
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(x)  # 8x8 out
    x = keras.layers.Conv2D(4, 1)(x)  # 8x8 out
    model = keras.Model(inputs, x)
    hand = 2 * (3 * 3 * 3 * 8 * 32 * 32 + 3 * 3 * 8 * 16 * 8 * 8 + 1 * 1 * 16 * 4 * 8 * 8)
    assert conv_flops(model, 32) == hand


def test_full_yolov2_flops_match_darknet():
    # darknet's published cost of YOLOv2 (COCO: 80 classes, 5 anchors) at 608: 62.94 BFLOPs.
    model = build_inference_model(80, [[1, 1]] * 5, "darknet19", 1.0, 608)
    assert conv_flops(model, 608) / 1e9 == pytest.approx(62.94, abs=0.01)


def test_alternate_runs_the_jobs_in_turn_and_drops_the_warmup():
    calls = []

    def job(name, values):
        it = iter(values)
        return lambda: calls.append(name) or {name: next(it)}

    r = alternate({"a": job("a", [9, 1, 2]), "b": job("b", [8, 3, 4])}, rounds=2)
    assert calls == ["a", "b"] * 3
    assert r == {"a": [1.0, 2.0], "b": [3.0, 4.0]}


def test_a_ratio_is_taken_within_the_least_disturbed_round():
    # Round 2 had both sides fast; side a's fastest round (3) alone would pair 0.5 with b's 2.0.
    rounds = {"a": [2.0, 1.0, 0.5], "b": [4.0, 2.0, 4.0]}
    out = figure("r", rounds, lambda a, b: (a - b) / a, "a", "b")
    # disturbance: round 1: 4 + 2 = 6, round 2: 2 + 1 = 3, round 3: 1 + 2 = 3 (tie: first)
    assert out["r"] == pytest.approx((1.0 - 2.0) / 1.0)
    per_round = [(2 - 4) / 2, (1 - 2) / 1, (0.5 - 4) / 0.5]
    assert out["r_spread"] == pytest.approx(max(per_round) - min(per_round))


@pytest.mark.parametrize(
    "name, value, spread, said, margin",
    [
        ("pipeline_scaling", 1.85, 0.01, "met", 0.05),
        ("pipeline_scaling", 1.85, 0.06, "within noise", 0.05),
        ("pipeline_scaling", 1.70, 0.05, "missed", -0.10),
        ("pipeline_scaling", 1.70, 0.15, "within noise", -0.10),
        ("loss_overhead", 0.02, 0.03, "met", 0.08),
        ("loss_overhead", 0.12, 0.01, "missed", -0.02),
        ("loss_overhead", 0.12, 0.03, "within noise", -0.02),
        ("eval_vs_forward", math.nan, 0.0, "not measured", math.nan),
    ],
)
def test_the_verdict_says_within_noise_when_the_rounds_disagree_more_than_the_margin(
    name, value, spread, said, margin
):
    got, by = verdict(name, value, spread)
    assert got == said
    assert by == pytest.approx(margin, nan_ok=True)


def test_the_table_shows_the_spread_and_the_verdict():
    r = {"pipeline_scaling": 1.85, "pipeline_scaling_spread": 0.06, "peak_rss_mb": 100.0}
    table = format_table(r)
    assert "within noise, margin +0.050" in table and "0.060" in table
    assert "peak_rss_mb" in table


def test_growth_arithmetic_on_made_up_timings():
    assert per_image_growth(1.0, 500, 12.0, 5000) == pytest.approx(1.2)
    assert per_image_growth(2.0, 500, 20.0, 5000) == pytest.approx(1.0)
    samples = [100.0, 120.0, 110.0] + [115.0] * 4 + [118.0, 126.0, 90.0]
    assert rss_drift(samples, 3) == pytest.approx(126.0 / 120.0 - 1)
    with pytest.raises(ValueError, match="two windows"):
        rss_drift(samples, 6)
    assert cores_needed(4000.0, 2.5) == pytest.approx(10.0)


def test_the_albumentations_cost_is_timed_with_and_without_the_stage(tmp_path):
    from detector.bench.pipeline import albumentations_cost
    from detector.config.schema import load_config
    from tests.data.test_mosaic import coloured_records

    records = coloured_records(tmp_path)
    cfg = load_config("configs/default.yaml", ["data.multiscale=[]", "model.input_size=64"])
    assert albumentations_cost(cfg, records, 64, quick=True) == {}
    stage = "data.albumentations=[{name: MedianBlur, blur_limit: 7, p: 1.0}]"
    cfg = load_config("configs/default.yaml", ["data.multiscale=[]", "model.input_size=64", stage])
    cost = albumentations_cost(cfg, records, 64, quick=True)
    with_, without = (
        cost["example_ms_albumentations"],
        cost["example_ms_no_albumentations"],
    )
    assert with_ > 0 and without > 0
    assert cost["albumentations_ms_per_image"] == pytest.approx(with_ - without)
    assert "albumentations_ms_per_image" in format_table(cost)


def _same_train_input(a, b) -> None:
    """The two TrainInputs feed the same stream: every field equal (the records by
    content, the augmenters by what they build, both with an open mosaic switch)."""
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name == "records":
            assert list(x) == list(y)
        elif field.name == "anchors":
            np.testing.assert_array_equal(x, y)
        elif field.name == "make_augmenter":
            aug_x, aug_y = x(), y()
            assert dataclasses.replace(aug_x, stage=None) == dataclasses.replace(aug_y, stage=None)
            assert aug_x.stage.pipeline == aug_y.stage.pipeline
        elif field.name == "mosaic_switch":
            assert isinstance(x, MosaicSwitch) and isinstance(y, MosaicSwitch)
            assert not x.closed and not y.closed
        else:
            assert x == y, field.name


def test_the_bench_times_the_pipeline_train_py_builds(tiny_spec, tmp_path):
    stage = "data.albumentations=[{name: ToGray, p: 0.5}]"
    cfg = load_config(
        overrides=[
            f"data.spec={tiny_spec}",
            f"train.run_dir={tmp_path / 'run'}",
            "data.batch_size=4",
            "data.workers=2",
            "data.mixup=0.3",
            "train.seed=7",
            stage,
        ]
    )
    train = load_dataset(str(tiny_spec), "train")
    resolved, plan, spec = bench_train_input(cfg, train)
    assert not (tmp_path / "run").exists()  # the bench writes nothing
    run_cfg, _ = resolve_devices(cfg, 1)
    with contextlib.ExitStack() as locks:
        run_plan = prepare_run(run_cfg, False, Cluster("none", None), train, locks=locks)
    _same_train_input(spec, make_train_input(run_plan.config, train, run_plan))
    timed = timed_configuration(resolved, spec)
    assert timed["mosaic"] == 1.0 and timed["multiscale"] == [256, 384]  # the default's
    assert (timed["mixup"], timed["workers"], timed["seed"]) == (0.3, 2, 7)
    assert timed["albumentations"] == [{"name": "ToGray", "p": 0.5}]
    assert timed["precision"] == resolved.train.precision != "auto"


@pytest.mark.slow  # a few minutes on a shared 2-core CPU: every measurement, smallest sizes
def test_a_quick_run_writes_the_configuration_and_every_ratio_with_its_spread(tiny_spec, tmp_path):
    out = tmp_path / "bench.json"
    tiny = (*TINY_MODEL[:-1], "data.multiscale=[64, 96]", f"data.spec={tiny_spec}")
    flags = set_flags(*tiny, "data.batch_size=4")
    argv = ["-m", "detector.bench", "--quick", "--json", str(out), *flags]
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["mosaic"] == 1.0 and r["multiscale"] == [64, 96]
    for ratio in TARGETS:
        assert math.isfinite(r[ratio]) and r[f"{ratio}_spread"] >= 0, ratio
