import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.evaluation.coco import STAT_NAMES, coco_metrics, format_metrics, load_coco

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT.parent / "shared" / "data" / "cocoeval_check"
needs_check = pytest.mark.skipif(not CHECK.is_dir(), reason="../shared/data absent")


def write_spec(tmp_path: Path, annotations: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"format: coco\nval:\n  images: {tmp_path}\n  annotations: {annotations}\n"
        f"train:\n  images: {tmp_path}\n  annotations: {annotations}\n"
    )
    return spec


@needs_check
def test_evaluate_detections_reproduces_cocoapi_reference(tmp_path):
    expected = json.loads((CHECK / "expected_bbox_stats.json").read_text())["stats"]
    spec = write_spec(tmp_path, CHECK / "instances_val2014_100.json")
    out = tmp_path / "metrics.json"
    cmd = [
        sys.executable,
        "evaluate.py",
        "--detections",
        str(CHECK / "instances_val2014_fakebbox100_results.json"),
        "--data",
        str(spec),
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    assert set(STAT_NAMES) | {"per_class"} == set(metrics)
    for name in STAT_NAMES:
        assert abs(metrics[name] - expected[name]) <= 1e-9, name
    assert f"= {expected['AP']:0.3f}" in proc.stdout


def tiny_ground_truth(tmp_path: Path) -> Path:
    gt = {
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 9, "file_name": "b.jpg", "width": 100, "height": 80},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 11, "name": "dog"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 3,
                "bbox": [10, 10, 40, 30],
                "area": 1200,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 9,
                "category_id": 11,
                "bbox": [50, 20, 30, 50],
                "area": 1500,
                "iscrowd": 0,
            },
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def test_perfect_and_wrong_class_detections(tmp_path):
    coco = load_coco(str(tiny_ground_truth(tmp_path)))
    perfect = [
        {"image_id": 7, "category_id": 3, "bbox": [10, 10, 40, 30], "score": 0.9},
        {"image_id": 9, "category_id": 11, "bbox": [50, 20, 30, 50], "score": 0.8},
    ]
    metrics = coco_metrics(coco, perfect)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    swapped = [dict(r, category_id=11 if r["category_id"] == 3 else 3) for r in perfect]
    assert coco_metrics(coco, swapped)["AP"] == pytest.approx(0.0)
    empty = coco_metrics(coco, [])
    assert empty["AP"] == 0.0 and set(empty["per_class"]) == {"cat", "dog"}


def test_half_overlap_counts_at_iou_50_only(tmp_path):
    coco = load_coco(str(tiny_ground_truth(tmp_path)))
    # Shifted so IoU with the truth is 0.62: a hit at 0.50, 0.55, 0.60, a miss from 0.65 on.
    shift = 40 * (1 - 0.62) / (1 + 0.62)
    results = [{"image_id": 7, "category_id": 3, "bbox": [10 + shift, 10, 40, 30], "score": 0.9}]
    metrics = coco_metrics(coco, results)
    assert metrics["per_class"]["cat"] == pytest.approx(0.3, abs=1e-6)  # 3 of 10 thresholds
    assert metrics["per_class"]["dog"] == pytest.approx(0.0)
    assert "per-class" in format_metrics(metrics) and np.isfinite(metrics["AP50"])


@needs_check
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_streaming_evaluation_equals_one_cocoeval(chunk):
    from detector.evaluation.coco import metrics_of
    from detector.evaluation.streaming import StreamingCocoEval

    coco = load_coco(str(CHECK / "instances_val2014_100.json"))
    results = json.loads((CHECK / "instances_val2014_fakebbox100_results.json").read_text())
    expected = coco_metrics(coco, results)
    stream = StreamingCocoEval(coco)
    images = sorted(coco.getImgIds())
    for start in range(0, len(images), chunk):
        ids = set(images[start : start + chunk])
        stream.add([r for r in results if r["image_id"] in ids], sorted(ids))
    got = metrics_of(stream.finish(), coco)
    assert got == expected  # bit-identical, per-class AP included
    reference = json.loads((CHECK / "expected_bbox_stats.json").read_text())["stats"]
    for name in STAT_NAMES:
        assert got[name] == pytest.approx(reference[name], abs=1e-12), name


@needs_check
@pytest.mark.parametrize("chunk", [1, 1000])
def test_streaming_arrays_equal_one_cocoeval(chunk):
    from detector.evaluation.coco import metrics_of
    from detector.evaluation.streaming import StreamingCocoEval
    from detector.inference.results import CocoDetections

    coco = load_coco(str(CHECK / "instances_val2014_100.json"))
    results = json.loads((CHECK / "instances_val2014_fakebbox100_results.json").read_text())
    expected = coco_metrics(coco, [dict(r) for r in results])
    stream = StreamingCocoEval(coco)
    images = sorted(coco.getImgIds())
    for start in range(0, len(images), chunk):
        ids = set(images[start : start + chunk])
        part = [r for r in results if r["image_id"] in ids]
        stream.add_detections(
            CocoDetections(
                np.array([r["image_id"] for r in part], np.int64),
                np.array([r["bbox"] for r in part], np.float64).reshape(-1, 4),
                np.array([r["score"] for r in part], np.float64),
                np.array([r["category_id"] for r in part], np.int64),
            ),
            sorted(ids),
        )
    assert metrics_of(stream.finish(), coco) == expected  # bit-identical, per class too


@needs_check
def test_fast_cocoeval_gives_cocoapis_arrays():
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from detector.evaluation.streaming import FastCocoEval

    coco = load_coco(str(CHECK / "instances_val2014_100.json"))
    results = json.loads((CHECK / "instances_val2014_fakebbox100_results.json").read_text())
    evaluators = []
    for kind in (COCOeval, FastCocoEval):
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = kind(coco, coco.loadRes([dict(r) for r in results]), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
        evaluators.append(evaluator)
    reference, fast = evaluators
    for name in ("precision", "recall", "scores"):
        np.testing.assert_array_equal(fast.eval[name], reference.eval[name])
    assert len(fast.evalImgs) == len(reference.evalImgs)
    for got, want in zip(fast.evalImgs, reference.evalImgs, strict=True):
        assert (got is None) == (want is None)
        for key in () if want is None else want:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), key)
