"""The benchmark's arithmetic (not its timings): FLOP counting and the derived ratios."""

import keras
import pytest

from detector.bench.core import TARGETS, conv_flops, format_table, ratios
from detector.model.network import build_inference_model


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


def test_ratios_from_given_timings():
    timings = {
        "pipeline_ips": 200.0,
        "step_ips": 50.0,
        "fit_ips": 48.0,
        "matmul_gflops": 100.0,
        "train_flops_per_image": 3e9,
        "full_step_ips": 1.0,
        "full_train_flops_per_image": 90e9,
        "step_seconds_yolo": 0.4,
        "step_seconds_mse": 0.36,
        "forward_ips": 150.0,
        "eval_ips": 120.0,
        "eval_seconds_per_epoch": 3.0,
        "epoch_seconds": 30.0,
    }
    r = ratios(timings)
    assert r["step_gflops"] == pytest.approx(150.0)
    assert r["step_vs_matmul"] == pytest.approx(1.5)
    assert r["full_step_vs_matmul"] == pytest.approx(0.9)
    assert r["pipeline_ratio"] == pytest.approx(48 / 50)
    assert r["loss_overhead"] == pytest.approx(0.1)
    assert r["eval_vs_forward"] == pytest.approx(0.8)
    assert r["callback_share"] == pytest.approx(0.1)
    assert "pipeline_ratio_bound" not in r  # needs the CPU times and no accelerator
    cpu = {"accelerators": 0, "step_cpu_ms": 30.0, "pipeline_cpu_ms": 2.0}
    assert ratios({**timings, **cpu})["pipeline_ratio_bound"] == pytest.approx(30 / 32)
    assert "pipeline_ratio_bound" not in ratios({**timings, **cpu, "accelerators": 1})
    table = format_table(r)
    assert "pipeline_ratio" in table and "met" in table
    assert set(TARGETS) <= set(r)


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
