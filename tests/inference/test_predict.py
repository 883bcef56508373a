"""The prediction API (`Detector`, `Result`) and ``predict.py``.

Hand-made checks use a tiny model whose convolution kernels are all zero: whatever the
image, its raw grid is the prediction bias, so on a 64 px input (2x2 grid, one anchor of
half a cell) it predicts a 16 px box centred in each cell, class "a" scoring SCORE_A and
class "b" SCORE_B. The rest use a model trained for one epoch on the tiny dataset.
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from PIL import Image

from detector import Detector
from detector.cli.predict import predict_main
from detector.cli.train import evaluate_main
from detector.data.coco import ground_truth
from detector.data.spec import load_dataset
from detector.data.yolo import read_yolo
from detector.evaluation.coco import coco_metrics, evaluate_model, load_coco
from detector.inference.metadata import Metadata
from detector.inference.runtimes import Runtime, load_runtime
from detector.model.network import build_inference_model
from tests.helpers.data import TINY_MODEL, set_flags

ROOT = Path(__file__).resolve().parents[2]
SIGMOID_3 = 1 / (1 + np.exp(-3.0))
SCORE_A = SIGMOID_3 * np.exp(2.0) / (np.exp(2.0) + 1)
SCORE_B = SIGMOID_3 * 1 / (np.exp(2.0) + 1)


def forced_model(letterbox: bool = False) -> keras.Model:
    model = build_inference_model(
        2, [[0.5, 0.5]], "tiny", 0.125, 64, ["a", "b"], [5, 9], letterbox=letterbox
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            weights = [np.zeros_like(w) for w in layer.get_weights()]
            if layer.use_bias:  # tx ty tw th, objectness logit 3, class logits 2 and 0
                weights[1] = np.array([0, 0, 0, 0, 3.0, 2.0, 0.0], np.float32)
            layer.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def forced():
    return {letterbox: Detector(forced_model(letterbox)) for letterbox in (False, True)}


@pytest.fixture(scope="module")
def forced_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("forced") / "forced.keras"
    forced_model().save(path)
    return path


def rows(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    return boxes[np.lexsort(boxes.T[::-1])]


# A 100 x 200 image; input boxes [8, 8, 24, 24] ... [40, 40, 56, 56] mapped back by hand.
# Plain resize: x / 0.32, y / 0.64. Letterbox: gain 0.32, 16 px pad above and below.
PLAIN = [[25, 12.5, 75, 37.5], [125, 12.5, 175, 37.5], [25, 62.5, 75, 87.5], [125, 62.5, 175, 87.5]]
LETTERBOX = [[25, 0, 75, 25], [125, 0, 175, 25], [25, 75, 75, 100], [125, 75, 175, 100]]


@pytest.mark.parametrize(("letterbox", "expected"), [(False, PLAIN), (True, LETTERBOX)])
def test_boxes_in_original_pixels_of_a_non_square_image(forced, letterbox, expected):
    (result,) = forced[letterbox].predict(np.zeros((100, 200, 3), np.uint8))
    np.testing.assert_allclose(rows(result.boxes), rows(expected), atol=1e-4)
    np.testing.assert_allclose(result.scores, SCORE_A, rtol=1e-5)
    assert result.names == ["a"] * 4 and result.class_ids.tolist() == [0] * 4
    assert result.orig_shape == (100, 200) and result.path is None and len(result) == 4


def test_conf_classes_agnostic_and_max_det(forced):
    detector, image = forced[False], np.zeros((100, 200, 3), np.uint8)
    (both,) = detector.predict(image, conf=0.1)
    assert sorted(both.names) == ["a"] * 4 + ["b"] * 4  # b's boxes are a's, other class
    (only_b,) = detector.predict(image, conf=0.1, classes=[1])
    assert only_b.names == ["b"] * 4
    np.testing.assert_allclose(only_b.scores, SCORE_B, rtol=1e-5)
    (agnostic,) = detector.predict(image, conf=0.1, agnostic=True)
    assert agnostic.names == ["a"] * 4  # each b lies exactly on an a that scores higher
    (two,) = detector.predict(image, conf=0.1, max_det=2)
    assert len(two) == 2
    assert len(detector.predict(image, conf=float(SCORE_A) + 1e-3)[0]) == 0
    with pytest.raises(ValueError, match="classes"):
        detector.predict(image, classes=[2])


def test_exif_rotated_jpeg_gets_boxes_in_the_displayed_image(forced, tmp_path):
    image = Image.fromarray(np.zeros((40, 80, 3), np.uint8))  # stored 80 wide, 40 high
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated: 40 wide, 80 high
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif.tobytes())
    (result,) = forced[False].predict(str(path))
    assert result.orig_shape == (80, 40) and result.path == str(path)
    # plain resize of 40 x 80 to 64: x * 40 / 64, y * 80 / 64
    expected = [[5, 10, 15, 30], [25, 10, 35, 30], [5, 50, 15, 70], [25, 50, 35, 70]]
    np.testing.assert_allclose(rows(result.boxes), rows(expected), atol=1e-4)


def test_to_coco_round_trip_and_plot(forced, tmp_path):
    image = np.full((100, 200, 3), 40, np.uint8)
    (result,) = forced[False].predict(image, conf=0.1)
    entries = result.to_coco(7)
    assert {e["category_id"] for e in entries} == {5, 9}  # the checkpoint's own ids
    assert {e["category_id"] for e in result.to_coco(7, category_ids=[1, 2])} == {1, 2}
    xywh = np.array([e["bbox"] for e in entries])
    np.testing.assert_allclose(xywh[:, :2] + xywh[:, 2:], result.boxes[:, 2:], atol=1e-3)
    truth = {
        "images": [{"id": 7, "file_name": "x.jpg", "width": 200, "height": 100}],
        "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
        "annotations": [
            {**e, "id": k + 1, "area": e["bbox"][2] * e["bbox"][3], "iscrowd": 0}
            for k, e in enumerate(entries)
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    metrics = coco_metrics(load_coco(str(tmp_path / "gt.json")), entries)
    assert metrics["AP"] == pytest.approx(1.0)
    drawn = result.plot()
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (image == 40).all()  # drawn on a copy
    changed = np.any(drawn != image, axis=-1)
    assert changed[38, 40:60].all() and not changed[50, 90:110].any()  # box edge, between
    with pytest.raises(ValueError, match="image is"):
        result.plot(np.zeros((10, 10, 3), np.uint8))


def recording_runtime(letterbox: bool):
    """A Runtime with NMS inside (as an export) that records its input and always
    finds one box, [0.25, 0.25, 0.75, 0.5] of the input."""
    seen = []

    def forward(images):
        seen.append(np.array(images))
        n = len(images)
        boxes = np.tile(np.array([[[0.25, 0.25, 0.75, 0.5]]], np.float32), (n, 1, 1))
        scores, classes = np.full((n, 1), 0.9, np.float32), np.zeros((n, 1), np.int32)
        return boxes, scores, classes, np.ones(n, np.int32)

    metadata = Metadata(["thing"], [3], 64, letterbox, [[1.0, 1.0]], format="tflite")
    return Runtime(forward, metadata), seen


def test_numpy_images_are_rgb_unless_bgr_and_files_are_read_as_rgb(tmp_path):
    runtime, seen = recording_runtime(letterbox=True)
    detector = Detector(runtime)
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[..., 0] = 255  # red
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    results = detector.predict([rgb, rgb[..., ::-1].copy(), str(path)])
    results += detector.predict(rgb[..., ::-1].copy(), bgr=True)
    inputs = np.concatenate(seen)
    assert inputs.shape == (4, 64, 64, 3)
    red, blue = [255, 0, 0], [0, 0, 255]
    for i, colour in enumerate([red, blue, red, red]):
        np.testing.assert_array_equal(inputs[i, 32, 32], colour)
    np.testing.assert_array_equal(inputs[0, 8, 32], [114, 114, 114])  # letterbox pad
    for result in results:  # x: 16 / 0.32; y: (16 - 16) / 0.32, (32 - 16) / 0.32
        np.testing.assert_allclose(result.boxes, [[50, 0, 150, 50]], atol=1e-4)
    assert results[2].path == str(path) and results[2].to_coco(1)[0]["category_id"] == 3


def test_fixed_nms_warns_once_about_a_different_iou_and_keeps_its_input_size():
    runtime, _ = recording_runtime(letterbox=False)
    detector = Detector(runtime)
    image = np.zeros((30, 40, 3), np.uint8)
    with pytest.warns(UserWarning, match=r"iou 0\.6 ignored: .*IoU 0\.45"):
        (result,) = detector.predict(image, iou=0.6)
    np.testing.assert_allclose(result.boxes, [[10, 7.5, 30, 15]], atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector.predict(image, iou=0.6)  # said once
        detector.predict(image, conf=0.95)  # a higher score is filtered, no warning
    assert len(detector.predict(image, conf=0.95)[0]) == 0
    with pytest.raises(ValueError, match="input_size: this tflite model takes 64 only"):
        detector.predict(image, input_size=96)


def test_import_detector_registers_everything_load_model_needs(forced_checkpoint):
    code = (
        "import sys, keras, numpy as np\n"
        "import detector\n"
        "from detector import Detector\n"
        f"path = {str(forced_checkpoint)!r}\n"
        "model = keras.models.load_model(path, safe_mode=True)\n"
        "print('HEAD', type(model.get_layer('yolo_head')).__module__)\n"
        "result = Detector.load(path).predict(np.zeros((9, 9, 3), 'uint8'))\n"
        "print('BOXES', len(result[0]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAD detector.model.layers" in proc.stdout and "BOXES 4" in proc.stdout


@pytest.fixture(scope="module")
def trained(tiny_spec, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("predict_runs") / "tiny"
    settings = ("data.batch_size=8", "model.num_anchors=2", "train.max_minutes=0")
    flags = set_flags(*TINY_MODEL, *settings)
    command = ["train.py", "--data", str(tiny_spec), "--epochs", "1", "--run-dir", str(run_dir)]
    proc = subprocess.run(
        [sys.executable, *command, *flags], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir / "best.keras"


def coco_key(entry):
    return entry["image_id"], -entry["score"], entry["category_id"], entry["bbox"]


def test_predict_gives_exactly_the_detections_evaluation_scores(trained, tiny_spec):
    val = load_dataset(str(tiny_spec), "val")
    model = keras.models.load_model(trained, safe_mode=True)
    metrics, expected = evaluate_model(model, val, 64)
    assert len(expected) > len(val.records)  # something to compare
    detector = Detector.load(trained)
    results = detector.predict([r.path for r in val.records], conf=0.005, iou=0.45, max_det=100)
    got = [
        entry
        for result, record in zip(results, val.records, strict=True)
        for entry in result.to_coco(record.image_id, val.category_ids)
    ]
    assert sorted(got, key=coco_key) == sorted(expected, key=coco_key)
    assert all(set(e) == {"image_id", "category_id", "bbox", "score"} for e in expected)
    assert abs(coco_metrics(ground_truth(val), got)["AP"] - metrics["AP"]) <= 1e-6
    for runner in (detector, load_runtime(str(trained))):
        assert abs(evaluate_model(runner, val, 64)[0]["AP"] - metrics["AP"]) <= 1e-6


LINE = re.compile(r"^\(\d+/(\d+)\) (\S+): (no detections|\d+ \w+(, \d+ \w+)*) \d+\.\d ms$")


def copy_val_images(tiny_spec, folder: Path) -> list[str]:
    """The val images copied into `folder` (the first into a subfolder) with a corrupt
    ``bad.jpg``; returns the copies' names relative to `folder`."""
    val = load_dataset(str(tiny_spec), "val")
    (folder / "sub").mkdir(parents=True)
    names = []
    for k, record in enumerate(val.records):
        name = os.path.join("sub" if k == 0 else "", os.path.basename(record.path))
        shutil.copy(record.path, folder / name)
        names.append(name)
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return names


@pytest.fixture(scope="module")
def folder_run(trained, tiny_spec, tmp_path_factory):
    """``predict.py`` over a folder of the val images and a corrupt one, saving labels and
    the JSON with the dataset's image ids; returns what it wrote and printed."""
    images = tmp_path_factory.mktemp("folder") / "images"
    names = copy_val_images(tiny_spec, images)
    argv = [str(trained), str(images), "--conf", "0.005", "--save-txt", "--save-json"]
    with pytest.MonkeyPatch.context() as patch:
        out, err = io.StringIO(), io.StringIO()
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        code = predict_main([*argv, "--data", str(tiny_spec)])
    assert code == 0, err.getvalue()
    folder = trained.parent / "predict"
    return {"images": images, "names": names, "folder": folder}, out.getvalue(), err.getvalue()


def test_cli_folder_reports_and_skips_the_corrupt_image(folder_run):
    run, out, err = folder_run
    names, folder = run["names"], run["folder"]
    assert err.count("\n") == 1 and "bad.jpg" in err and "skipped" in err
    lines = out.strip().splitlines()
    assert len(lines) == len(names) + 1
    matches = [LINE.match(line) for line in lines[:-1]]
    assert all(matches) and {m.group(1) for m in matches} == {str(len(names) + 1)}
    assert sorted(m.group(2) for m in matches) == sorted(names)
    assert "images/s" in lines[-1] and "1 unreadable skipped" in lines[-1]
    assert str(folder) in lines[-1]
    for name in names:  # drawn, at the original size
        assert cv2.imread(str(folder / name)).shape == cv2.imread(str(run["images"] / name)).shape
    assert not (folder / "bad.jpg").exists()


def test_cli_json_scores_as_the_checkpoint_does(folder_run, trained, tiny_spec, tmp_path):
    predictions = folder_run[0]["folder"] / "predictions.json"
    val = load_dataset(str(tiny_spec), "val")
    entries = json.loads(predictions.read_text())
    assert entries and {e["image_id"] for e in entries} <= {r.image_id for r in val.records}
    scored, checkpoint = tmp_path / "scored.json", tmp_path / "checkpoint.json"
    argv = ["--detections", str(predictions), "--data", str(tiny_spec), "--json", str(scored)]
    assert evaluate_main(argv) == 0
    assert evaluate_main([str(trained), "--json", str(checkpoint)]) == 0
    for name in ("AP", "AP50", "AR100"):
        a, b = (json.loads(p.read_text())[name] for p in (scored, checkpoint))
        assert abs(a - b) <= 1e-3, name


def test_cli_labels_read_back_with_the_yolo_reader(folder_run, tiny_spec):
    run = folder_run[0]
    val = load_dataset(str(tiny_spec), "val")
    by_file = {os.path.basename(r.path): r.image_id for r in val.records}
    entries = json.loads((run["folder"] / "predictions.json").read_text())
    labels = read_yolo(str(run["images"]), str(run["folder"] / "labels"), val.names)
    assert "annotation_malformed" not in labels.problems, labels.problems.report("labels")
    assert len(labels.records) == len(run["names"])
    assert sum(len(r.boxes) for r in labels.records) > 0
    for record in labels.records:
        image_id = by_file[os.path.basename(record.path)]
        boxes = [e["bbox"] for e in entries if e["image_id"] == image_id]
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes if w > 0 and h > 0])
        np.testing.assert_allclose(rows(record.boxes), rows(xyxy.reshape(-1, 4)), atol=0.01)


def test_cli_makes_a_new_folder_per_call(folder_run, trained):
    run = folder_run[0]
    assert predict_main([str(trained), str(run["images"] / "sub"), "--no-save-img"]) == 0
    assert os.listdir(trained.parent / "predict-2") == []  # nothing asked to be saved


def test_cli_on_a_video_writes_an_mp4_of_every_frame(trained, tmp_path, capsys):
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(6):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    argv = [str(trained), path, "--out", str(out), "--conf", "0.005", "--save-txt", "--save-json"]
    assert predict_main(argv) == 0
    stdout = capsys.readouterr().out
    assert "(frame 6/6) clip.mp4: " in stdout and "6 frames in" in stdout
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    size = capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
    capture.release()
    assert frames == 6 and size == (96, 64)
    assert sorted(os.listdir(out / "labels")) == sorted(f"clip_{i}.txt" for i in range(1, 7))
    entries = json.loads((out / "predictions.json").read_text())
    assert entries and {(e["image_id"], e["file_name"]) for e in entries} <= {
        (i, f"clip_{i}") for i in range(1, 7)
    }


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--conf", "1.5"], "error: --conf: expected a number in [0, 1], got 1.5"),
        (["--max-det", "0"], "error: --max-det: expected an integer in 1..10000, got 0"),
        (["--input-size", "50"], "error: --input-size: expected a multiple of 32, got 50"),
        (["--classes", "zebra"], "error: --classes: unknown class 'zebra'"),
        (["--max-det", "many"], "error: argument --max-det: invalid int value: 'many'"),
        (["--data", "spec.yaml"], "error: --data: only the JSON uses it; add --save-json"),
    ],
)
def test_cli_bad_input_is_one_error_line(forced_checkpoint, tmp_path, capsys, flags, message):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    try:
        code = predict_main([str(forced_checkpoint), str(image), *flags])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_cli_missing_files_are_named(forced_checkpoint, tmp_path, capsys):
    missing = str(tmp_path / "nope.jpg")
    assert predict_main([str(forced_checkpoint), missing]) == 2
    assert capsys.readouterr().err == f"error: SOURCE: not found: {missing}\n"
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    assert predict_main([str(tmp_path / "gone.keras"), str(image)]) == 2
    assert capsys.readouterr().err == f"error: model not found: {tmp_path / 'gone.keras'}\n"
    assert not (tmp_path / "predict").exists()  # nothing written on bad input
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_text("not an image")
    assert predict_main([str(forced_checkpoint), str(tmp_path / "bad"), "--no-save-img"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: ") and "x.jpg" in err[0]
    assert err[1] == f"error: SOURCE: no readable image in {tmp_path / 'bad'}"


def test_a_fixed_batch_runtime_runs_any_number_of_images():
    from detector.inference.metadata import Metadata
    from detector.inference.runtimes import Runtime

    def forward(images):  # batch of exactly 2; echoes each image's first pixel as its score
        assert len(images) == 2
        first = np.asarray(images, np.float32)[:, 0, 0, 0]
        count = np.ones(2, np.int32)
        return np.zeros((2, 1, 4)), first[:, None], np.zeros((2, 1), np.int32), count

    runtime = Runtime(forward, Metadata(["a"], [1], 8, False, [[1.0, 1.0]]), batch_size=2)
    images = np.arange(3, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    boxes, scores, classes, valid = runtime(images)
    assert boxes.shape == (3, 1, 4) and valid.tolist() == [1, 1, 1]
    assert scores[:, 0].tolist() == [0.0, 1.0, 2.0]
