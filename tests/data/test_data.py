"""Tests of detector.data: synthetic generator, COCO reader, dataset specs."""

import json
import os
import re
import time

import cv2
import numpy as np
import pytest
import yaml

import detector.data
from detector.data import synthetic
from detector.data.coco import read_coco
from detector.data.spec import load_annotations, load_dataset, load_spec
from detector.data.spec_checks import PACKAGED_SPECS

pytestmark = pytest.mark.filterwarnings("error")

COCO128 = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "coco128")


def _iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU (N, N) of xyxy boxes."""
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area[:, None] + area[None, :] - inter)


# --- synthetic generator -------------------------------------------------------------------


def _write(tmp_path, name: str, seed: int) -> tuple[bytes, str]:
    images = str(tmp_path / name / "images")
    annotations = str(tmp_path / name / "train.json")
    synthetic.write_split(images, annotations, "train", 6, seed=seed, size=96)
    with open(annotations, "rb") as f:
        return f.read(), images


def test_synthetic_same_seed_gives_identical_files(tmp_path):
    json_a, images_a = _write(tmp_path, "a", seed=3)
    json_b, images_b = _write(tmp_path, "b", seed=3)
    json_c, _ = _write(tmp_path, "c", seed=4)
    assert json_a == json_b
    assert json_a != json_c
    for name in sorted(os.listdir(images_a)):
        with (
            open(os.path.join(images_a, name), "rb") as a,
            open(os.path.join(images_b, name), "rb") as b,
        ):
            assert a.read() == b.read()


def test_synthetic_coco_json_and_box_statistics(tmp_path):
    synthetic.make_synthetic(str(tmp_path), seed=1, train_images=40, val_images=3, size=256)
    assert sorted(os.listdir(tmp_path / "images" / "val")) == [
        "000001.jpg",
        "000002.jpg",
        "000003.jpg",
    ]
    assert not [n for n in os.listdir(tmp_path / "images" / "train") if not n.endswith(".jpg")]
    with open(tmp_path / "annotations" / "train.json") as f:
        coco = json.load(f)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4]
    assert [c["name"] for c in coco["categories"]] == list(synthetic.SHAPES)
    assert len(coco["images"]) == 40
    anns = coco["annotations"]
    assert len({a["id"] for a in anns}) == len(anns)
    assert all(a["iscrowd"] == 0 and 1 <= a["category_id"] <= 4 for a in anns)
    per_image = np.bincount([a["image_id"] for a in anns], minlength=41)[1:]
    assert per_image.min() >= 1 and per_image.max() <= synthetic.MAX_OBJECTS
    xywh = np.array([a["bbox"] for a in anns])
    assert (xywh[:, :2] >= 0).all() and (xywh[:, :2] + xywh[:, 2:] <= 256).all()
    long_side = xywh[:, 2:].max(axis=1)
    assert long_side.min() >= synthetic.MIN_SIDE - 1 and long_side.max() <= synthetic.MAX_SIDE + 1
    assert np.median(long_side) < 70  # log-uniform: small objects are common
    aspect = xywh[:, 2] / xywh[:, 3]
    assert aspect.min() < 0.5 and aspect.max() > 2
    assert all(0 < a["area"] <= a["bbox"][2] * a["bbox"][3] for a in anns)
    for image_id in range(1, 41):
        boxes = xywh[[a["image_id"] == image_id for a in anns]]
        iou = _iou_matrix(np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1))
        np.fill_diagonal(iou, 0)
        assert iou.max() <= synthetic.MAX_IOU
    image = cv2.imread(str(tmp_path / "images" / "train" / "000001.jpg"))
    assert image.shape == (256, 256, 3)


@pytest.mark.parametrize("shape", synthetic.SHAPES)
def test_shape_mask_fills_its_frame(shape):
    rng = np.random.default_rng(0)
    for long_side in np.exp(rng.uniform(np.log(14), np.log(150), 40)):
        mask = synthetic.shape_mask(rng, shape, long_side)
        assert abs(max(mask.shape) - long_side) <= 1
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()


def test_synthetic_boxes_are_tight_around_drawn_pixels(monkeypatch):
    # A flat background without clutter or noise: every non-background pixel is an object.
    monkeypatch.setattr(
        synthetic, "_background", lambda rng, size: np.full((size, size, 3), 128, np.float32)
    )
    monkeypatch.setattr(synthetic, "_draw_clutter", lambda *args: None)
    rng = np.random.default_rng(0)
    noise = np.zeros((synthetic.NOISE_TILE,) * 2 + (3,), np.float32)
    for _ in range(20):
        image, boxes, labels, areas = synthetic.render_image(rng, 200, synthetic.SHAPES, noise)
        drawn = (image != 128).any(axis=2)
        covered = np.zeros_like(drawn)
        for x1, y1, x2, y2 in boxes.astype(int):
            inside = drawn[y1:y2, x1:x2]
            assert (
                inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            )
            covered[y1:y2, x1:x2] = True
        assert not (drawn & ~covered).any()
        assert len(boxes) == len(labels) == len(areas) >= 1


# --- COCO reader ---------------------------------------------------------------------------


def _coco_file(tmp_path, annotations: list[dict]) -> str:
    coco = {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 100, "height": 50},
            {"id": 20, "file_name": "sub/b.jpg", "width": 64, "height": 64},
            {"id": 30, "file_name": "c.jpg", "width": 32, "height": 32},
        ],
        "categories": [
            {"id": 90, "name": "toothbrush"},
            {"id": 1, "name": "person"},
            {"id": 5, "name": "airplane"},
        ],
        "annotations": annotations,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return str(path)


def _ann(image_id: int, category_id: int, bbox: list[float], iscrowd: int = 0) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": iscrowd}


def test_coco_reader_maps_ids_clips_and_counts(tmp_path):
    annotations = [
        _ann(10, 5, [10, 5, 20, 10]),
        _ann(10, 90, [90, 40, 20, 20]),  # partly outside: clipped
        _ann(10, 1, [0, 0, 50, 50], iscrowd=1),  # crowd: an ignore region
        _ann(20, 1, [5, 5, 0, 10]),  # zero width
        _ann(20, 7, [1, 1, 5, 5]),  # unknown category
        _ann(20, 1, [100, 100, 10, 10]),  # wholly outside
        _ann(20, 1, [1, 2, 3, 4]),
        _ann(99, 1, [1, 2, 3, 4]),  # unknown image
    ]
    ds = read_coco(_coco_file(tmp_path, annotations), str(tmp_path / "img"))
    assert ds.category_ids == [1, 5, 90]
    assert ds.names == ["person", "airplane", "toothbrush"]
    assert ds.annotation_file == str(tmp_path / "instances.json")
    assert ds.problems == {
        "annotation_unknown_image": 1,
        "class_unknown": 1,
        "box_zero_size": 1,
        "box_outside_image": 1,
        "box_clipped": 1,
    }
    a, b, c = ds.records
    assert (a.image_id, a.height, a.width, a.path) == (10, 50, 100, str(tmp_path / "img" / "a.jpg"))
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 15], [90, 40, 100, 50]])
    np.testing.assert_array_equal(a.classes, [1, 2])
    np.testing.assert_array_equal(a.ignore, [[0, 0, 50, 50]])
    assert b.path == str(tmp_path / "img" / "sub" / "b.jpg")
    np.testing.assert_array_equal(b.boxes, [[1, 2, 4, 6]])
    np.testing.assert_array_equal(b.classes, [0])
    assert c.image_id == 30
    assert c.boxes.shape == (0, 4) and c.classes.shape == (0,) and c.ignore.shape == (0, 4)
    for r in ds.records:
        assert r.boxes.dtype == np.float32 and r.classes.dtype == np.int32
        assert r.ignore.dtype == np.float32


def test_coco_reader_skips_malformed_entries_and_keeps_the_rest(tmp_path):
    annotations = [
        {"image_id": 10, "category_id": 1},  # no bbox
        _ann(10, 1, [1, 2, 3]),  # three numbers
        _ann(10, 1, [1, 2, "x", 4]),
        "not an object",
        _ann(10, 1, [1, 2, 3, 4]),
    ]
    path = _coco_file(tmp_path, annotations)
    ds = read_coco(path, str(tmp_path))
    assert ds.problems == {"annotation_malformed": 4}
    assert any("annotations[0]" in e for e in ds.problems.examples["annotation_malformed"])
    np.testing.assert_array_equal(ds.records[0].boxes, [[1, 2, 4, 6]])
    np.testing.assert_array_equal(ds.coco_keep, [4])


def test_coco_reader_rejects_invalid_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_coco(str(path), str(tmp_path))


def test_coco_reader_is_fast_on_many_annotations(tmp_path):
    rng = np.random.default_rng(0)
    n_images, n_anns = 20_000, 100_000
    images = [
        {"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(n_images)
    ]
    xy = rng.uniform(0, 400, (n_anns, 2)).round(1).tolist()
    image_ids = rng.integers(0, n_images, n_anns).tolist()
    anns = [_ann(image_ids[k], 1, [*xy[k], 30.0, 20.0]) for k in range(n_anns)]
    path = tmp_path / "big.json"
    path.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    start = time.perf_counter()
    ds = read_coco(str(path), str(tmp_path))
    assert time.perf_counter() - start < 10  # an O(images x annotations) reader takes minutes
    assert sum(len(r.boxes) for r in ds.records) == n_anns
    first = ds.records[0]
    expected = [[*xy[k], xy[k][0] + 30, xy[k][1] + 20] for k in range(n_anns) if image_ids[k] == 0]
    np.testing.assert_allclose(first.boxes, np.array(expected).reshape(-1, 4), rtol=1e-6)


@pytest.mark.skipif(not os.path.isdir(COCO128), reason="shared coco128 data not present")
def test_coco_reader_on_coco128():
    ds = read_coco(
        os.path.join(COCO128, "annotations", "instances.json"), os.path.join(COCO128, "images")
    )
    assert len(ds.records) == 128
    assert sum(len(r.boxes) for r in ds.records) == 929
    assert sum(len(r.ignore) for r in ds.records) == 10
    assert len(ds.names) == len(ds.category_ids) == 80
    assert ds.category_ids[0] == 1 and ds.names[0] == "person"
    assert ds.problems == {}
    assert sum(len(r.boxes) == 0 and len(r.ignore) == 0 for r in ds.records) == 2
    for r in ds.records:
        assert os.path.isfile(r.path)
        assert (r.boxes[:, 2:] <= [r.width, r.height]).all() and (r.boxes >= 0).all()
        assert (r.classes >= 0).all() and (r.classes < 80).all()


# --- dataset specs -------------------------------------------------------------------------


def _spec(tmp_path, spec: dict) -> str:
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _coco_spec(tmp_path, **extra) -> dict:
    _coco_file(tmp_path, [_ann(10, 5, [10, 5, 20, 10])])
    (tmp_path / "img").mkdir(exist_ok=True)
    split = {"images": "img", "annotations": "instances.json"}
    return {"format": "coco", "train": split, "val": dict(split), **extra}


def test_the_packaged_synthetic_spec_is_found_by_name_and_writes_under_the_cwd(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    spec = load_spec("synthetic")
    assert spec["path"] == os.path.join(PACKAGED_SPECS, "synthetic.yaml")
    assert spec["train"]["images"] == str(tmp_path / "data" / "synthetic" / "images" / "train")
    assert load_spec("synthetic.yaml") == spec
    (tmp_path / "synthetic").write_text("format: coco\n")  # a file of that name wins
    with pytest.raises(ValueError, match=f"{tmp_path / 'synthetic'}: train: missing"):
        load_spec("synthetic")


def test_spec_resolves_relative_paths_and_reads_coco(tmp_path):
    path = _spec(tmp_path, _coco_spec(tmp_path, names=["a", "b", "c"]))
    spec = load_spec(path)
    assert spec["train"] == {
        "images": str(tmp_path / "img"),
        "annotations": str(tmp_path / "instances.json"),
    }
    ds = detector.data.load_dataset(path, "val", check_images=False)
    assert ds.names == ["a", "b", "c"]
    assert ds.category_ids == [1, 5, 90]
    np.testing.assert_array_equal(ds.records[0].classes, [1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "voc2"}, "format: unknown format 'voc2'"),
        ({"format": None}, "format: missing"),
        ({"train": None, "val": None}, "train: missing"),
        ({"train": {"images": "img"}}, "train.annotations: missing"),
        (
            {"train": {"images": "img", "anotations": "x.json"}},
            "train.anotations: unknown key; did you mean 'annotations'",
        ),
        ({"nmes": ["a"]}, "nmes: unknown key; did you mean 'names'"),
        ({"names": "abc"}, "names: names file not found: .*abc$"),
        ({"names": [1, 2]}, "names: expected a non-empty list"),
        ({"synthetic": {"seed": 1}}, "synthetic: only valid with format: synthetic"),
    ],
)
def test_spec_errors_name_the_file_and_key(tmp_path, change, message):
    spec = {k: v for k, v in {**_coco_spec(tmp_path), **change}.items() if v is not None}
    path = _spec(tmp_path, spec)
    with pytest.raises(ValueError, match=f"^{re.escape(path)}: {message}"):
        load_dataset(path, "train")


def test_spec_missing_split_file_and_folder(tmp_path):
    spec = _coco_spec(tmp_path)
    del spec["val"]
    spec["train"]["annotations"] = "nope.json"
    path = _spec(tmp_path, spec)
    with pytest.raises(ValueError, match=f"^{re.escape(path)}: val: missing$"):
        load_dataset(path, "val")
    missing = os.path.join(str(tmp_path), "nope.json")
    with pytest.raises(ValueError) as err:
        load_dataset(path, "train")
    assert str(err.value) == f"{path}: train.annotations: file not found: {missing}"
    spec["train"] = {"images": "noimg", "annotations": "instances.json"}
    path = _spec(tmp_path, spec)
    with pytest.raises(ValueError, match="train.images: folder not found"):
        load_dataset(path, "train")
    assert len(load_annotations(path, "train").records) == 3  # no images needed


def test_spec_names_count_must_match(tmp_path):
    path = _spec(tmp_path, _coco_spec(tmp_path, names=["a", "b"]))
    with pytest.raises(
        ValueError, match=f"{re.escape(path)}: names: 2 names given but train has 3 classes"
    ):
        load_dataset(path, "train")


def test_spec_unparsable_or_absent(tmp_path):
    (tmp_path / "bad.yaml").write_text("format: [coco\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_spec(str(tmp_path / "bad.yaml"))
    with pytest.raises(ValueError, match="absent.yaml: dataset spec not found"):
        load_spec(str(tmp_path / "absent.yaml"))


def test_synthetic_spec_generates_on_first_use_only(tmp_path):
    spec = {
        "format": "synthetic",
        "synthetic": {"seed": 5, "train_images": 4, "val_images": 2, "size": 64},
        "train": {"images": "syn/images/train", "annotations": "syn/annotations/train.json"},
        "val": {"images": "syn/images/val", "annotations": "syn/annotations/val.json"},
    }
    path = _spec(tmp_path, spec)
    train = load_dataset(path, "train")
    assert len(train.records) == 4 and train.names == list(synthetic.SHAPES)
    assert not (tmp_path / "syn" / "annotations" / "val.json").exists()
    json_file = tmp_path / "syn" / "annotations" / "train.json"
    before = json_file.stat().st_mtime_ns
    assert len(load_dataset(path, "train").records) == 4
    assert json_file.stat().st_mtime_ns == before
    val = load_annotations(path, "val")  # made on first use too
    assert val.annotation_file == str(tmp_path / "syn" / "annotations" / "val.json")
    assert len(load_dataset(path, "val").records) == 2
    spec["synthetic"]["train_images"] = 5
    path = _spec(tmp_path, spec)
    with pytest.raises(ValueError, match="delete that file to regenerate"):
        load_dataset(path, "train")
    spec["synthetic"]["size"] = 10
    path = _spec(tmp_path, spec)
    with pytest.raises(ValueError, match=r"synthetic.size: expected an integer >= 64, got 10"):
        load_spec(path)


def test_synthetic_style_bounds_objects_and_clutter(tmp_path):
    style = synthetic.Style(max_objects=2, min_side=40.0, max_side=60.0, clutter=0.0)
    annotations = tmp_path / "train.json"
    images = str(tmp_path / "images")
    synthetic.write_split(images, str(annotations), "train", 12, 1, 128, style=style)
    coco = json.loads(annotations.read_text())
    counts = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=13)[1:]
    assert counts.max() <= 2
    long_side = np.array([max(a["bbox"][2], a["bbox"][3]) for a in coco["annotations"]])
    assert long_side.min() >= 39 and long_side.max() <= 61
    assert coco["info"]["synthetic"]["clutter"] == 0.0
