"""`python -m detector.data check`, the anchors tool, augmentation geometry, letterbox,
multi-scale batches."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from detector.cli.data import main as data_main
from detector.data.augment import build_augmenter, prepare_example, resize
from detector.data.pipeline import TrainInput, make_train_dataset, multiscale_sizes
from detector.data.records import Record
from detector.data.spec import load_dataset
from detector.model.anchors import box_shapes, kmeans_anchors, mean_best_iou
from detector.utils.boxes import letterbox_geometry, shape_iou, to_image_pixels, to_input_pixels
from tests.helpers.data import AUGMENT, NAMES, write_all_formats

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_check_counts_are_identical_in_every_format(tmp_path, capsys):
    specs = write_all_formats(str(tmp_path), count=8)
    reports = {}
    for fmt, spec in specs.items():
        out = tmp_path / f"check_{fmt}.json"
        assert data_main(["check", spec, "--json", str(out)]) == 0
        reports[fmt] = json.loads(out.read_text())["splits"]
    train = reports["coco"]["train"]
    expected = load_dataset(specs["coco"], "train")
    assert train["images"] == 8 and train["negatives"] == 1 and train["problems"] == {}
    assert train["boxes"] == sum(len(r.boxes) for r in expected.records)
    assert sum(train["per_class"].values()) == train["boxes"]
    assert list(train["per_class"]) == NAMES
    for fmt in ("voc", "yolo"):
        for key in ("images", "boxes", "per_class", "negatives", "problems"):
            assert reports[fmt]["train"][key] == train[key], (fmt, key)
    assert "[train] 8 images" in capsys.readouterr().out


def test_check_writes_the_plots(tmp_path):
    specs = write_all_formats(str(tmp_path), count=5)
    plots = tmp_path / "plots"
    assert data_main(["check", specs["voc"], "--plots", str(plots)]) == 0
    for name in ("classes.png", "box_shapes.png", "augmented.png"):
        image = cv2.imread(str(plots / name))
        assert image is not None and image.shape[0] > 200 and image.std() > 5, name


def test_check_reports_a_missing_annotation_file_without_traceback(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("format: coco\ntrain: {images: img, annotations: none.json}\n")
    assert data_main(["check", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "train.annotations: file not found" in err and "none.json" in err
    assert "Traceback" not in err


def test_kmeans_recovers_planted_clusters_and_beats_euclidean_kmeans():
    rng = np.random.default_rng(1)
    centres = np.array([[0.6, 0.8], [2.0, 1.2], [1.1, 3.5], [5.0, 4.0], [9.0, 6.5]])
    wh = np.concatenate([c * np.exp(rng.normal(0, 0.08, (150, 2))) for c in centres])
    anchors = kmeans_anchors(wh, 5)
    np.testing.assert_allclose(anchors, centres[np.argsort(centres.prod(1))], rtol=0.08)
    ours = mean_best_iou(wh, anchors)
    assert ours > 0.85
    # Plain k-means (Euclidean, mean centres) with the same number of restarts.
    best = 0.0
    for seed in range(10):
        r = np.random.default_rng(seed)
        c = wh[r.choice(len(wh), 5, replace=False)].copy()
        for _ in range(100):
            assign = np.argmin(((wh[:, None] - c[None]) ** 2).sum(-1), axis=1)
            c = np.array(
                [wh[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(5)]
            )
        best = max(best, float(shape_iou(wh, c).max(1).mean()))
    assert ours >= best - 1e-9


def test_kmeans_on_a_sample_of_many_boxes_finds_the_same_clusters():
    rng = np.random.default_rng(2)
    centres = np.array([[0.6, 0.8], [2.0, 1.2], [1.1, 3.5], [5.0, 4.0], [9.0, 6.5]])
    wh = np.concatenate([c * np.exp(rng.normal(0, 0.08, (12_000, 2))) for c in centres])
    sampled = kmeans_anchors(wh, 5, max_boxes=2_000)  # 60 000 boxes, 2 000 clustered
    np.testing.assert_allclose(sampled, centres[np.argsort(centres.prod(1))], rtol=0.05)
    assert mean_best_iou(wh, sampled) > 0.85


def test_anchors_tool_prints_and_writes_grid_cell_anchors(tmp_path, capsys):
    specs = write_all_formats(str(tmp_path), count=8)
    out = tmp_path / "anchors.json"
    argv = ["anchors", specs["yolo"], "--k", "3", "--input-size", "320", "--json", str(out)]
    assert data_main(argv) == 0
    result = json.loads(out.read_text())
    assert result["input_size"] == 320 and len(result["anchors"]) == 3
    wh = box_shapes(load_dataset(specs["yolo"], "train").records, 320)
    assert result["mean_iou"] == pytest.approx(
        mean_best_iou(wh, np.array(result["anchors"])), abs=1e-4
    )
    assert wh.max() <= 10 and "mean IoU" in capsys.readouterr().out  # 320 px = 10 cells
    assert data_main(["anchors", specs["yolo"], "--input-size", "300"]) == 2
    for flags in (["--k", "0"], ["--k", "-3"], ["--restarts", "0"]):
        assert data_main(["anchors", specs["yolo"], *flags]) == 2
    assert "--restarts: expected an integer >= 1, got 0" in capsys.readouterr().err


def _drawn_record(tmp_path, boxes) -> Record:
    """Grey image with a saturated rectangle exactly at each box."""
    image = np.full((120, 160, 3), 128, np.uint8)
    for x1, y1, x2, y2 in boxes:
        image[y1:y2, x1:x2] = (255, 0, 0)
    path = str(tmp_path / "drawn.png")
    cv2.imwrite(path, image[..., ::-1])
    return Record(
        1,
        path,
        120,
        160,
        np.asarray(boxes, np.float32),
        np.zeros(len(boxes), np.int32),
        np.zeros((0, 4), np.float32),
    )


@pytest.mark.parametrize("letterbox", [False, True])
def test_augmented_boxes_still_frame_the_drawn_objects(tmp_path, letterbox):
    record = _drawn_record(tmp_path, [[20, 30, 60, 90], [100, 10, 150, 50]])
    colour = {"hue": 0.0, "saturation": 1.0, "exposure": 1.0}
    augmenter = build_augmenter(**{**AUGMENT, **colour, "scale": (0.6, 1.4), "translate": 0.25})
    for seed in range(25):
        image, boxes, _ = prepare_example(
            record, 128, augmenter, np.random.default_rng(seed), letterbox
        )
        red = (image[..., 0] > 200) & (image[..., 1] < 60)
        for x1, y1, x2, y2 in boxes:
            inner = red[int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
            assert inner.size == 0 or inner.mean() > 0.95, (seed, x1, y1, x2, y2)
            # the box is tight: one pixel outside it on each side is not red everywhere
            ring = red[max(int(y1) - 2, 0) : int(y2) + 2, max(int(x1) - 2, 0) : int(x2) + 2]
            assert ring.mean() < inner.mean() + 1e-9 or inner.size == 0
        covered = np.zeros_like(red)
        for x1, y1, x2, y2 in boxes:
            covered[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
        assert (red & ~covered).sum() <= 0.35 * max(red.sum(), 1)  # dropped only if mostly gone


def test_letterbox_round_trip_maps_boxes_back_exactly():
    image = np.zeros((90, 200, 3), np.uint8)
    boxes = np.array([[10, 5, 50, 80], [0, 0, 200, 90]], np.float32)
    out, mapped = resize(image, boxes, 128, letterbox=True)
    assert out.shape == (128, 128, 3)
    gain = 128 / 200
    pad = (128 - round(90 * gain)) // 2
    np.testing.assert_allclose(mapped[1], [0, pad, 128, pad + round(90 * gain)], atol=0.5)
    assert (out[:pad] == 114).all() and (out[pad + 58 :] == 114).all()
    np.testing.assert_allclose(to_image_pixels(mapped, 90, 200, 128, True), boxes, atol=1e-3)
    plain_out, plain = resize(image, boxes, 128)
    np.testing.assert_allclose(to_image_pixels(plain, 90, 200, 128, False), boxes, atol=1e-3)


@pytest.mark.parametrize("letterbox", [False, True])
@pytest.mark.parametrize("height, width", [(90, 200), (300, 120), (64, 64), (37, 251)])
def test_box_maps_round_trip_and_match_the_resized_image(height, width, letterbox):
    rng = np.random.default_rng(height * width)
    corner = rng.uniform(0, [width, height], (20, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(1, [width, height], (20, 2))], 1)
    boxes = np.minimum(boxes, [width, height, width, height])
    size = 96
    on_input = to_input_pixels(boxes, height, width, size, letterbox)  # original -> network
    assert on_input.dtype == np.float32 and (on_input >= -1e-3).all()
    assert (on_input <= size + 1e-3).all()
    back = to_image_pixels(on_input, height, width, size, letterbox)  # network -> original
    np.testing.assert_allclose(back, boxes, atol=1e-3 * max(height, width) / size)
    # the whole image lands exactly where resize puts its pixels: the pads are grey
    gx, gy, px, py = letterbox_geometry(height, width, size, letterbox)
    full = to_input_pixels([[0, 0, width, height]], height, width, size, letterbox)[0]
    np.testing.assert_allclose(full, [px, py, px + width * gx, py + height * gy], atol=1e-4)
    out, _ = resize(np.full((height, width, 3), 7, np.uint8), np.zeros((0, 4)), size, letterbox)
    x1, y1, x2, y2 = np.round(full).astype(int)
    assert (out[y1:y2, x1:x2] == 7).all()
    assert (out != 7).sum() == 3 * (size**2 - (x2 - x1) * (y2 - y1))  # the rest is padding
    if letterbox:
        assert gx == gy and max(x2 - x1, y2 - y1) == size and min(x1, y1) >= 0
    else:
        assert (x1, y1, x2, y2) == (0, 0, size, size)


def test_multiscale_batches_have_the_planned_sizes(tmp_path):
    specs = write_all_formats(str(tmp_path), count=6)
    records = load_dataset(specs["coco"], "train").records
    anchors = [[1.0, 1.0], [2.0, 2.0]]
    spec = TrainInput(
        records, 64, anchors, 2, 10, None, seed=3, multiscale=(64, 160), multiscale_every=2
    )
    ds = make_train_dataset(spec)
    planned = multiscale_sizes(64, 160, 100_000, 3)
    seen = []
    for step, ((images, y_true, _), _) in enumerate(ds.take(12)):
        size = images.shape[1]
        assert images.shape == (2, size, size, 3) and y_true.shape[1:3] == (size // 32, size // 32)
        assert size == planned[step // 2]
        seen.append(size)
    assert set(seen) <= set(range(64, 161, 32)) and len(set(seen)) > 1
    assert set(planned[:1000]) == {64, 96, 128, 160}


def test_multiscale_training_traces_a_bounded_number_of_train_functions(tmp_path, monkeypatch):
    from detector.model.loss import YoloLoss, identity_loss
    from detector.model.network import build_inference_model, build_training_model

    specs = write_all_formats(str(tmp_path), count=4)
    records = load_dataset(specs["coco"], "train").records
    anchors = [[1.0, 1.0], [2.0, 2.0]]
    inference = build_inference_model(3, anchors, "tiny", 0.125, 64)
    model = build_training_model(inference, YoloLoss(anchors, 3), 10)
    model.compile(optimizer="adam", loss=identity_loss)
    traces = []  # Python runs the loss only while TensorFlow traces a step function
    original = YoloLoss.call
    monkeypatch.setattr(
        YoloLoss, "call", lambda self, *a, **k: traces.append(1) or original(self, *a, **k)
    )
    spec = TrainInput(records, 64, anchors, 2, 10, None, multiscale=(64, 128), multiscale_every=1)
    ds = make_train_dataset(spec)
    model.fit(ds, steps_per_epoch=12, epochs=1, verbose=0, shuffle=False)
    sizes = set(multiscale_sizes(64, 128, 12, 0).tolist())
    assert len(sizes) == 3
    assert 1 <= len(traces) <= len(sizes)


def _run_module(*argv: str, cwd) -> subprocess.CompletedProcess:
    """`python -m ARGV...` in a fresh interpreter, as a user types it."""
    env = {**os.environ, "PYTHONPATH": REPO}
    command = [sys.executable, "-m", *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_anchors_command_prints_the_k_means_anchors_of_the_training_boxes(tmp_path):
    specs = write_all_formats(str(tmp_path), count=8)
    out = tmp_path / "anchors.json"
    argv = [specs["coco"], "--k", "4", "--input-size", "320", "--json", str(out)]
    result = _run_module("detector.data", "anchors", *argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    wh = box_shapes(load_dataset(specs["coco"], "train").records, 320)
    expected = kmeans_anchors(wh, 4, seed=0)
    line = next(x for x in result.stdout.splitlines() if x.startswith("anchors (grid cells): "))
    pairs = line.split(": ", 1)[1].split(",  ")
    printed = np.array([[float(v) for v in pair.split(",")] for pair in pairs])
    assert printed.shape == (4, 2)
    np.testing.assert_allclose(printed, expected, rtol=1e-3)
    assert f"{len(wh)} boxes, k=4, input 320 px (10x10 grid)" in result.stdout
    np.testing.assert_allclose(json.loads(out.read_text())["anchors"], expected, rtol=1e-4)


@pytest.mark.parametrize("module", [("detector.data", "synthesize"), ("detector.data.synthetic",)])
def test_synthesize_command_writes_the_requested_images_and_annotations(tmp_path, module):
    out = tmp_path / "shapes"
    argv = [str(out), "--train", "3", "--val", "2", "--size", "64", "--seed", "5"]
    result = _run_module(*module, *argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote 3 train + 2 val images to {out}" in result.stdout
    assert "RuntimeWarning" not in result.stderr
    for split, count in (("train", 3), ("val", 2)):
        files = sorted(os.listdir(out / "images" / split))
        assert files == [f"{i:06d}.jpg" for i in range(1, count + 1)]  # no temporary left
        assert all(cv2.imread(str(out / "images" / split / f)).shape == (64, 64, 3) for f in files)
        coco = json.loads((out / "annotations" / f"{split}.json").read_text())
        assert len(coco["images"]) == count and coco["info"]["synthetic"]["seed"] == 5
        assert {a["image_id"] for a in coco["annotations"]} <= set(range(1, count + 1))
    assert sorted(os.listdir(out / "annotations")) == ["train.json", "val.json"]


def test_synthesize_command_reports_a_bad_size_without_traceback(tmp_path, capsys):
    assert data_main(["synthesize", str(tmp_path / "x"), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "size: expected >= 64 pixels, got 32" in err and "Traceback" not in err
