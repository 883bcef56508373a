"""A checkpoint saved before the move into subpackages still loads (safe_mode, registered
layers only) and scores the AP it scored when it was saved.

tests/fixtures/tiny_dbe6811.keras was trained and saved by main at dbe6811, the last
commit with the flat layout (the command is in tiny_dbe6811.json, with the spec of its
synthetic dataset and its best.json: the COCO numbers the old code measured on that val
split at that epoch). The val split is generated again here from the same seed.
"""

import json
from pathlib import Path

import keras
import pytest
import yaml

import detector  # noqa: F401  (registers the custom layers for load_model)
from detector.data.spec import load_dataset
from detector.evaluation.coco import STAT_NAMES, evaluate_model
from detector.inference.detector import Detector

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKPOINT = FIXTURES / "tiny_dbe6811.keras"
RECORD = json.loads((FIXTURES / "tiny_dbe6811.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    root = tmp_path_factory.mktemp("old_spec")
    spec = {**RECORD["spec"], "val": {"images": "images/val", "annotations": "val.json"}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return load_dataset(str(root / "spec.yaml"), "val")


def test_the_old_checkpoint_loads_safely_and_scores_what_it_scored(val):
    assert CHECKPOINT.stat().st_size <= 1_000_000
    model = keras.models.load_model(CHECKPOINT, safe_mode=True)
    assert type(model.get_layer("yolo_head")).__module__ == "detector.model.layers"
    e = RECORD["eval"]
    metrics, _ = evaluate_model(
        model,
        val,
        model.get_layer("yolo_head").input_size,
        batch_size=e["batch_size"],
        score_threshold=e["score_threshold"],
        nms_iou=e["nms_iou"],
        max_detections=e["max_detections"],
    )
    saved = RECORD["best_json"]
    assert saved["AP50"] > 0  # a trained model: something to agree on
    for name in STAT_NAMES:
        assert metrics[name] == pytest.approx(saved[name], abs=1e-9), name
    assert metrics["per_class"] == pytest.approx(saved["per_class"], abs=1e-9)


def test_the_old_checkpoint_predicts_through_the_api(val):
    found = Detector.load(str(CHECKPOINT)).predict([r.path for r in val.records], conf=0.005)
    assert len(found) == len(val.records) and sum(len(r) for r in found) > 0
