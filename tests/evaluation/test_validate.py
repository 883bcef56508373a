"""The validation report of ``evaluate.py`` and of the end of training
(`detector.evaluation.validate`), on an untrained tiny model whose run config sets
``eval.nms_iou`` 0.1."""

import contextlib
import dataclasses
import io
import json
import re

import cv2
import keras
import numpy as np
import pytest

from detector import Detector
from detector.cli.train import evaluate_main
from detector.data.coco import ground_truth
from detector.data.spec import load_dataset
from detector.engine.run import final_report
from detector.evaluation.coco import STAT_NAMES, evaluate_model
from detector.evaluation.plots import PICTURES
from detector.evaluation.validate import TILE, draw_grids, validate
from detector.inference.runtimes import keras_runtime
from detector.model.network import build_inference_model

RUN_IOU = 0.1  # the run config's eval.nms_iou (the default is 0.45)
PNG, JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
SWEEP_ROW = re.compile(r"^\s+(\d+)\s+(\d\.\d{3})\s+(\d\.\d{3})\s+(\d\.\d{3})\s+(\d+\.\d)$")


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = evaluate_main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def val(tiny_spec):
    return load_dataset(str(tiny_spec), "val")


@pytest.fixture(scope="module")
def checkpoint(tiny_spec, val, tmp_path_factory):
    """An untrained tiny model saved in a run folder whose config.yaml names the tiny data
    and sets eval.nms_iou."""
    keras.utils.set_random_seed(0)
    model = build_inference_model(len(val.names), [[1, 1], [2, 2]], "tiny", 0.25, 64, val.names)
    folder = tmp_path_factory.mktemp("run")
    model.save(folder / "best.keras")
    (folder / "config.yaml").write_text(
        f"data: {{spec: {tiny_spec}}}\neval: {{nms_iou: {RUN_IOU}, batch_size: 4}}\n"
    )
    return folder / "best.keras"


@pytest.fixture(scope="module")
def model(checkpoint):
    return keras.models.load_model(checkpoint, safe_mode=True)


def results_at(model, val, **settings) -> list[dict]:
    """The COCO results evaluation scores at these settings, as JSON gives them back."""
    return json.loads(json.dumps(evaluate_model(model, val, 64, **settings)[1]))


@pytest.fixture(scope="module")
def full_run(checkpoint, tmp_path_factory):
    """evaluate.py CHECKPOINT with every output asked for, default --out."""
    metrics = tmp_path_factory.mktemp("json") / "metrics.json"
    argv = [str(checkpoint), "--save-json", "--voc", "--sizes", "64,96", "--json", str(metrics)]
    code, out, err = run_cli(argv)
    assert code == 0, err
    return checkpoint.parent / "val", out, json.loads(metrics.read_text())


def test_every_report_file_is_written_beside_the_checkpoint(full_run):
    folder, out, _ = full_run
    for name in (*PICTURES, "speed_accuracy.png"):
        assert (folder / name).read_bytes().startswith(PNG), name
    for name in ("val_pred_0.jpg", "val_labels_0.jpg"):  # 8 val images: one grid of 2 x 4
        image = cv2.imread(str(folder / name))
        assert (folder / name).read_bytes().startswith(JPEG) and image.shape == (640, 1280, 3)
    assert not (folder / "val_pred_1.jpg").exists()
    assert f"report written to {folder}" in out


def test_report_json_has_a_row_per_class_and_the_metrics(full_run, val):
    folder, _, printed = full_run
    report = json.loads((folder / "report.json").read_text())
    rows = report["report"]["rows"]
    assert [r["class"] for r in rows] == ["all", *val.names]
    assert rows[0]["instances"] == sum(len(r.boxes) for r in val.records)
    assert rows[0]["images"] == len(val.records)
    assert sum(r["instances"] for r in rows[1:]) == rows[0]["instances"]
    assert report == printed  # --json writes what report.json holds
    assert report["report"]["conf"] == 0.25


def test_json_keeps_the_coco_keys_and_adds_report_and_sweep(full_run, val):
    printed = full_run[2]
    assert set(printed) == {*STAT_NAMES, "per_class", "report", "sweep"}
    assert set(printed["per_class"]) == set(val.names)
    assert [r["size"] for r in printed["sweep"]] == [64, 96]
    assert printed["sweep"][0]["AP"] == printed["AP"]  # the checkpoint's own size
    assert all(r["images_per_s"] > 0 for r in printed["sweep"])


def test_printout_has_the_coco_table_report_voc_and_two_sweep_rows(full_run):
    _, out, printed = full_run
    assert f"NMS IoU {RUN_IOU:g}," in out and "config.yaml" in out
    assert f"maxDets=100 ] = {printed['AP']:0.3f}" in out
    assert "VOC mAP@0.5" in out and "Error breakdown (TIDE" in out
    sweep = [SWEEP_ROW.match(line) for line in out.splitlines()]
    sweep = [m for m in sweep if m]
    assert [int(m.group(1)) for m in sweep] == [64, 96]
    assert float(sweep[1].group(2)) == pytest.approx(printed["sweep"][1]["AP"], abs=5e-4)


def test_the_run_configs_nms_iou_is_used(full_run, model, val):
    at_run_iou = results_at(model, val, nms_iou=RUN_IOU)
    assert len(at_run_iou) < len(results_at(model, val))  # the default 0.45 keeps more
    assert json.loads((full_run[0] / "predictions.json").read_text()) == at_run_iou


def test_iou_and_max_det_flags_override_the_run_config(full_run, checkpoint, model, val):
    argv = [str(checkpoint), "--iou", "0.3", "--max-det", "20", "--save-json", "--conf", "0.1"]
    code, out, err = run_cli(argv)
    assert code == 0, err
    folder = checkpoint.parent / "val-2"  # the full run made val
    predictions = json.loads((folder / "predictions.json").read_text())
    assert predictions == results_at(model, val, nms_iou=0.3, max_detections=20)
    assert predictions != results_at(model, val, nms_iou=RUN_IOU, max_detections=20)
    per_image = np.bincount([p["image_id"] for p in predictions])
    assert per_image.max() == 20
    assert "NMS IoU 0.3," in out and "VOC mAP" not in out  # no --voc
    assert json.loads((folder / "report.json").read_text())["report"]["conf"] == 0.1


def test_detections_file_gets_the_same_report_with_out(full_run, tiny_spec, tmp_path):
    folder = full_run[0]
    argv = ["--detections", str(folder / "predictions.json"), "--data", str(tiny_spec)]
    code, out, err = run_cli([*argv, "--out", str(tmp_path / "r"), "--json", str(tmp_path / "j")])
    assert code == 0, err
    again, first = (json.loads(p.read_text()) for p in (tmp_path / "j", folder / "report.json"))
    assert again["AP"] == pytest.approx(first["AP"], abs=1e-6)
    assert again["report"]["rows"] == first["report"]["rows"]
    assert (tmp_path / "r" / "val_labels_0.jpg").is_file() and "sweep" not in again
    code, out, err = run_cli([*argv, "--json", str(tmp_path / "m")])  # no --out: metrics only
    assert code == 0 and set(json.loads((tmp_path / "m").read_text())) == {*STAT_NAMES, "per_class"}
    assert "Error breakdown" not in out


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--conf", "1.5"], "--conf"),
        (["--iou", "-0.1"], "--iou"),
        (["--max-det", "0"], "--max-det"),
        (["--batch-size", "0"], "--batch-size"),
        (["--sizes", "64,70"], "--sizes"),
        (["--sizes", "64,x"], "--sizes"),
        (["--sizes", "0"], "--sizes"),
        (["--input-size", "65"], "--input-size"),
    ],
)
def test_bad_flag_is_one_error_line_naming_it(checkpoint, flags, flag):
    before = sorted(p.name for p in checkpoint.parent.iterdir())
    code, out, err = run_cli([str(checkpoint), *flags])
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {flag}:"), err
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == before  # no folder made


@pytest.mark.parametrize(("flags", "flag"), [(["--iou", "0.5"], "--iou"), (["--voc"], "--voc")])
def test_detections_reject_what_they_cannot_honour(tiny_spec, tmp_path, flags, flag):
    results = tmp_path / "r.json"
    results.write_text("[]")
    code, _, err = run_cli(["--detections", str(results), "--data", str(tiny_spec), *flags])
    assert code == 2 and err.startswith(f"error: {flag}:") and err.count("\n") == 1


def test_a_sweep_of_a_fixed_size_model_is_an_error_naming_sizes(model, val, tmp_path):
    fixed = Detector(keras_runtime(model))  # what an exported artifact loads as
    with pytest.raises(ValueError, match="^--sizes: this keras model takes 64 px only"):
        validate(fixed, val, out_dir=str(tmp_path / "v"), input_size=64, sizes=[64, 96])
    assert not (tmp_path / "v").exists()


def test_grids_draw_predictions_above_conf_only(val, tmp_path):
    record = val.records[0]
    box = {"image_id": int(record.image_id), "category_id": val.category_ids[0]}
    box["bbox"] = [0.0, 0.0, record.width / 2, record.height / 2]
    grids = {}
    for name, score in (("none", None), ("low", 0.2), ("high", 0.9)):
        results = [] if score is None else [{**box, "score": score}]
        assert draw_grids(val, results, str(tmp_path / name), 0.25) == [
            "val_pred_0.jpg",
            "val_labels_0.jpg",
        ]
        grids[name] = cv2.imread(str(tmp_path / name / "val_pred_0.jpg")).astype(int)
    assert np.abs(grids["low"] - grids["none"]).max() <= 2  # JPEG noise only
    changed = np.abs(grids["high"] - grids["none"]).max(axis=2) > 60
    rows, columns = np.nonzero(changed)
    assert rows.max() < TILE and columns.max() < TILE  # drawn in the first tile only
    assert changed[: TILE // 2, : TILE // 2].any()  # around the box, top-left quarter


def test_final_report_writes_run_val_and_returns_the_metrics(checkpoint, model, val, capsys):
    from detector.config.schema import EvalConfig

    metrics = final_report(str(checkpoint.parent), val, EvalConfig(nms_iou=RUN_IOU))
    out = capsys.readouterr().out
    assert set(metrics) == {*STAT_NAMES, "per_class"}
    expected, _ = evaluate_model(model, val, 64, ground_truth(val), nms_iou=RUN_IOU)
    assert metrics["AP"] == pytest.approx(expected["AP"], abs=1e-9)
    assert f"best checkpoint {checkpoint} on the val split:" in out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out
    report = json.loads((checkpoint.parent / "val" / "report.json").read_text())
    assert report["AP"] == metrics["AP"] and len(report["report"]["rows"]) == len(val.names) + 1


def test_grids_are_skipped_with_a_warning_when_images_are_missing(val, tmp_path, capsys):
    gone = dataclasses.replace(val.records[0], path=str(tmp_path / "gone.jpg"))
    dataset = dataclasses.replace(val, records=[gone])
    assert draw_grids(dataset, [], str(tmp_path), 0.25) == []
    err = capsys.readouterr().err
    assert err.startswith("warning: no val_pred / val_labels grids") and "gone.jpg" in err
    assert list(tmp_path.iterdir()) == []


def test_an_export_is_reported_at_the_nms_it_runs(model, tiny_spec, monkeypatch, tmp_path):
    baked = Detector(keras_runtime(model, iou_threshold=0.3, max_detections=7))
    monkeypatch.setattr(Detector, "load", classmethod(lambda cls, path, **kw: baked))
    code, out, _ = run_cli(["exported.tflite", "--data", str(tiny_spec), "--out", str(tmp_path)])
    assert "NMS IoU 0.3, <= 7 detections per image" in out
    code, _, err = run_cli(["exported.tflite", "--data", str(tiny_spec), "--iou", "0.5"])
    assert code == 2 and err.startswith("error: --iou: this keras model runs NMS at IoU 0.3")


def test_an_unusable_out_folder_is_one_error_line(checkpoint, tiny_spec, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli([str(checkpoint), "--data", str(tiny_spec), "--out", str(blocker / "v")])
    assert code == 2 and err.startswith("error: ") and "file/v" in err and err.count("\n") == 1
