"""Datasets as users bring them: an Ultralytics dataset YAML and a darknet obj.data as is,
read into the same records as our own yolo spec; the test split; VOC image sets."""

import os
import re
from collections import Counter

import numpy as np
import pytest
import yaml

from detector.data.coco import read_coco
from detector.data.convert import write_voc, write_yolo
from detector.data.image_lists import label_path
from detector.data.records import Dataset
from detector.data.spec import load_annotations, load_dataset, load_spec
from tests.helpers.data import NAMES, make_records

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")
COCO128 = os.path.join(SHARED, "coco128")


def _write(path, text: str) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def _by_path(dataset: Dataset) -> dict:
    return {r.path: r for r in dataset.records}


def _assert_same_records(got: Dataset, want: Dataset) -> None:
    """Same images (path, id, size), boxes and classes; no problem in either."""
    assert got.names == want.names == NAMES
    assert not got.problems and not want.problems
    assert [r.path for r in got.records] == [r.path for r in want.records]
    for a, b in zip(got.records, want.records, strict=True):
        assert (a.image_id, a.height, a.width) == (b.image_id, b.height, b.width)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.classes, b.classes)


def _assert_known_boxes(dataset: Dataset, truth: list) -> None:
    """The records hold the drawn boxes (to the 6 decimals of the YOLO txt)."""
    records = _by_path(dataset)
    assert set(records) == {r.path for r in truth}
    for want in truth:
        got = records[want.path]
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        np.testing.assert_array_equal(got.classes, want.classes)


def _images_with_labels(images: str, labels: str, count: int, seed: int) -> list:
    """`count` drawn images under `images` (one in a subfolder), YOLO labels under
    `labels`; returns the drawn records."""
    records = make_records(images, count, seed)
    write_yolo(Dataset(records, list(NAMES), [0, 1, 2], None), images, labels)
    return records


@pytest.fixture
def ultralytics_root(tmp_path):
    """An Ultralytics dataset: images/{train,val,extra}, labels/ beside, a list file."""
    root = tmp_path / "ds"
    truth = {}
    for split, seed in (("train", 0), ("val", 1), ("extra", 2)):
        images, labels = str(root / "images" / split), str(root / "labels" / split)
        truth[split] = _images_with_labels(images, labels, 5, seed)
    rel = [os.path.relpath(r.path, root) for r in truth["val"]]
    _write(root / "val.txt", "".join(f"./{p}\n" for p in reversed(rel)) + "\n# end\n")
    return root, truth


def test_ultralytics_yaml_reads_like_our_yolo_spec(ultralytics_root, tmp_path):
    root, truth = ultralytics_root
    data = _write(
        tmp_path / "cfg" / "data.yaml",
        "# Ultralytics YOLO dataset\n"
        "path: ../ds\n"
        "train: images/train\n"
        "val: val.txt\n"
        "test: [images/train, images/extra]\n"
        "nc: 3\n"
        "names: {0: red, 1: green, 2: blue}\n"
        "download: https://example.com/ds.zip\n",
    )
    ours = _write(
        tmp_path / "ours.yaml",
        yaml.safe_dump(
            {
                "format": "yolo",
                "names": NAMES,
                "train": {"images": "ds/images/train", "labels": "ds/labels/train"},
            }
        ),
    )
    spec = load_spec(data)
    assert spec["format"] == "yolo" and spec["layout"] == "ultralytics"
    assert spec["val"]["images"] == str(root / "images" / "val")
    assert spec["test"]["images"] == str(root / "images")
    _assert_same_records(load_dataset(data, "train"), load_dataset(ours, "train"))
    _assert_known_boxes(load_dataset(data, "train"), truth["train"])
    val = load_dataset(data, "val")  # a list file, in any order: the images sorted by path
    _assert_known_boxes(val, truth["val"])
    assert [r.image_id for r in val.records] == [1, 2, 3, 4, 5]
    assert [r.path for r in val.records] == sorted(r.path for r in truth["val"])
    test = load_dataset(data, "test")  # a list of folders
    _assert_known_boxes(test, truth["train"] + truth["extra"])
    assert len(load_annotations(data, "test").records) == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: images/train\nnames: [a, b]\nnc: 3\n", "nc: 3 classes, but names has 2"),
        ("trian: images/train\nnames: [a]\n", "trian: unknown key; did you mean 'train'"),
        ("path: .\ntrain: images/nowhere\nnames: [a]\n", "train: not found: .*nowhere$"),
        ("train: [images/train, 7]\nnames: [a]\n", r"train\[1\]: expected a path"),
        ("train: images/train\nnames: {0: a, 2: b}\n", "names: map keys must be the indices"),
        ("train: images/train\n", "names: missing"),
        ("path: elsewhere\ntrain: images/train\nnames: [a]\n", "path: not found: .*elsewhere"),
    ],
)
def test_ultralytics_yaml_errors_name_the_file_and_key(ultralytics_root, text, message):
    root, _ = ultralytics_root
    path = _write(root / "data.yaml", text)
    with pytest.raises(ValueError, match=f"^{re.escape(path)}: {message}"):
        load_dataset(path, "train")


def test_a_split_without_any_label_file_is_an_error(ultralytics_root):
    root, _ = ultralytics_root
    for label in (root / "labels" / "train").rglob("*.txt"):
        label.unlink()
    path = _write(root / "data.yaml", "train: images/train\nnames: [red, green, blue]\n")
    want = f"{path}: train: no label file for any of its 5 images (looked for e.g. {root}/labels/"
    with pytest.raises(ValueError, match=f"^{re.escape(want)}"):
        load_dataset(path, "train")


def test_ultralytics_names_from_nc_alone(ultralytics_root):
    root, _ = ultralytics_root
    path = _write(root / "data.yaml", "train: images/train\nnc: 3\n")
    assert load_dataset(path, "train").names == ["class_0", "class_1", "class_2"]


def test_darknet_obj_data_reads_like_our_yolo_spec(tmp_path):
    """AlexeyAB's layout: data/obj.data, labels beside the images, paths relative to the
    darknet folder (the parent of data/)."""
    darknet = tmp_path / "darknet"
    obj = str(darknet / "data" / "obj")
    truth = _images_with_labels(obj, obj, 6, seed=3)
    lines = [os.path.relpath(r.path, darknet) for r in truth]
    _write(darknet / "data" / "train.txt", "\n".join(lines[:4]) + "\n")
    _write(darknet / "data" / "valid.txt", "\n".join(lines[4:]) + "\n")
    _write(darknet / "data" / "obj.names", "red\ngreen\nblue\n\n")
    data = _write(
        darknet / "data" / "obj.data",
        "# darknet\nclasses = 3\ntrain  = data/train.txt\nvalid = data/valid.txt\n"
        "names = data/obj.names\nbackup = backup/\n",
    )
    spec = load_spec(data)
    assert spec["layout"] == "darknet" and spec["names"] == NAMES and "test" not in spec
    train, val = load_dataset(data, "train"), load_dataset(data, "val")
    _assert_known_boxes(train, truth[:4])
    _assert_known_boxes(val, truth[4:])
    ours = _write(
        tmp_path / "ours.yaml",
        yaml.safe_dump({"format": "yolo", "names": NAMES, "val": {"images": obj, "labels": obj}}),
    )
    both = load_dataset(ours, "val")  # all six images: the same records for the same files
    mine = {r.path: r for r in both.records}
    assert len(mine) == 6
    for record in [*train.records, *val.records]:
        np.testing.assert_array_equal(record.boxes, mine[record.path].boxes)
        assert (record.height, record.width) == (mine[record.path].height, mine[record.path].width)


def test_darknet_obj_data_errors_name_the_file_and_line(tmp_path):
    _write(tmp_path / "obj.names", "a\nb\n")
    _write(tmp_path / "train.txt", "")
    cases = [
        ("classes = 3\ntrain = train.txt\nnames = obj.names\n", "classes: 3 classes, but names"),
        ("classes = 2\ntrain = train.txt\nbackup\n", "line 3: expected key = value"),
        ("classes = 2\ntrian = train.txt\n", "trian: unknown key; did you mean 'train'"),
        ("classes = 2\ntrain = nowhere.txt\n", "train: not found: .*nowhere.txt \\(nor "),
        ("classes = two\ntrain = train.txt\n", "classes: expected a whole number"),
    ]
    for text, message in cases:
        path = _write(tmp_path / "obj.data", text)
        with pytest.raises(ValueError, match=f"^{re.escape(path)}: {message}"):
            load_spec(path)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "darknet")), reason="absent")
def test_darknets_own_voc_data_finds_its_names_and_names_the_missing_list():
    path = os.path.abspath(os.path.join(SHARED, "darknet", "cfg", "voc.data"))
    # names = data/voc.names is found beside cfg/ (darknet's folder); the lists are
    # absolute paths of pjreddie's machine
    with pytest.raises(ValueError, match=f"^{re.escape(path)}: train: not found: /home/pj"):
        load_spec(path)


def test_label_paths_follow_the_ultralytics_and_darknet_convention():
    assert label_path("/d/images/train/a.jpg") == "/d/labels/train/a.txt"
    assert label_path("/d/images/x/images/b.png") == "/d/images/x/labels/b.txt"  # the last
    assert label_path("/d/obj/sub/c.jpeg") == "/d/obj/sub/c.txt"  # beside the image
    assert label_path("/v/VOC2007/JPEGImages/0001.jpg") == "/v/VOC2007/labels/0001.txt"
    assert label_path("/d/my_images/a.b.jpg") == "/d/my_images/a.b.txt"


def test_our_spec_has_a_test_split_and_voc_image_sets(tmp_path):
    images, xml = str(tmp_path / "JPEGImages"), str(tmp_path / "Annotations")
    truth = make_records(images, 6, seed=4)
    write_voc(Dataset(truth, list(NAMES), [1, 2, 3], None), images, xml)
    sets = tmp_path / "ImageSets"
    _write(sets / "train.txt", "img0\nimg1\nimg2\n")
    _write(sets / "test.txt", "img3\nimg4 1\nimg5\nimg9\n")  # img9 has no image
    split = {"images": "JPEGImages", "annotations": "Annotations"}
    spec = {
        "format": "voc",
        "names": NAMES,
        "train": {**split, "ids": "ImageSets/train.txt"},
        "test": {**split, "ids": "ImageSets/test.txt"},
    }
    path = _write(tmp_path / "voc.yaml", yaml.safe_dump(spec))
    train, test = load_dataset(path, "train"), load_dataset(path, "test")
    assert [os.path.basename(r.path) for r in train.records] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert sorted(os.path.basename(r.path) for r in test.records) == [
        "img3.jpg",  # in sub/
        "img4.jpg",
        "img5.jpg",
    ]
    assert not train.problems and dict(test.problems) == {"image_missing": 1}
    assert "img9" in test.problems.examples["image_missing"][0]
    _assert_known_boxes(test, truth[3:])
    with pytest.raises(ValueError, match="val: missing$"):
        load_dataset(path, "val")
    spec["train"]["ids"] = "ImageSets/nowhere.txt"
    path = _write(tmp_path / "voc.yaml", yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"train.ids: file not found: .*nowhere.txt$"):
        load_dataset(path, "train")


def test_synthetic_spec_has_no_test_split(tmp_path):
    split = {"images": "i", "annotations": "a.json"}
    spec = {"format": "synthetic", "train": split, "val": split, "test": split}
    path = _write(tmp_path / "s.yaml", yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="test: format synthetic makes train and val only"):
        load_spec(path)


@pytest.mark.skipif(not os.path.isdir(COCO128), reason="../shared/data/coco128 absent")
def test_coco128_ultralytics_yaml_as_is():
    data = load_dataset(os.path.join(COCO128, "dataset.yaml"), "train")
    assert len(data.records) == 128 and len(data.names) == 80
    assert data.names[:3] == ["person", "bicycle", "car"] and data.names[79] == "toothbrush"
    coco = read_coco(
        os.path.join(COCO128, "annotations", "instances.json"), os.path.join(COCO128, "images")
    )
    assert data.names == coco.names
    per_class = Counter(c for r in data.records for c in r.classes.tolist())
    assert per_class == Counter(c for r in coco.records for c in r.classes.tolist())
    assert sum(per_class.values()) == 929 and per_class[0] == 254  # person
    sizes = {os.path.basename(r.path): (r.height, r.width) for r in coco.records}
    assert all(sizes[os.path.basename(r.path)] == (r.height, r.width) for r in data.records)
