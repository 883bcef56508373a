"""COCO, VOC and YOLO readers: the same records from the same boxes; the bad-input policy."""

import os
from collections import Counter

import cv2
import numpy as np
import pytest
import yaml

from detector.data.augment import prepare_example
from detector.data.coco import ground_truth, read_coco
from detector.data.files import read_image
from detector.data.policy import inspect_image
from detector.data.spec import load_dataset
from detector.data.yolo import read_yolo
from tests.helpers.data import NAMES, by_file, damage_annotations, damage_images, write_all_formats

COCO128 = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "coco128")
FORMATS = ("coco", "voc", "yolo")


def test_the_same_boxes_read_the_same_through_every_reader(tmp_path):
    specs = write_all_formats(str(tmp_path), count=6)
    read = {fmt: load_dataset(spec, "train") for fmt, spec in specs.items()}
    reference = by_file(read["coco"])
    assert len(reference) == 6 and sum(len(r.boxes) for r in reference.values()) > 6
    for fmt in FORMATS:
        ds = read[fmt]
        assert ds.names == NAMES and not ds.problems, fmt
        records = by_file(ds)
        assert records.keys() == reference.keys()
        for name, ref in reference.items():
            got = records[name]
            assert (got.height, got.width, got.path) == (ref.height, ref.width, ref.path)
            np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-3, err_msg=f"{fmt} {name}")
            np.testing.assert_array_equal(got.classes, ref.classes)
            if fmt != "yolo":  # YOLO txt cannot express ignore regions
                np.testing.assert_allclose(got.ignore, ref.ignore, atol=1e-3)
    assert len(by_file(read["voc"])["img1.jpg"].ignore) == 1  # VOC difficult = ignore
    assert len(by_file(read["coco"])["img2.jpg"].boxes) == 0  # the negative is kept


@pytest.mark.skipif(not os.path.isdir(COCO128), reason="../shared/data/coco128 absent")
def test_coco128_json_and_txt_give_the_same_boxes():
    with open(os.path.join(COCO128, "dataset.yaml")) as f:
        names = yaml.safe_load(f)["names"]
    names = [names[i] for i in range(len(names))] if isinstance(names, dict) else names
    coco = read_coco(
        os.path.join(COCO128, "annotations", "instances.json"), os.path.join(COCO128, "images")
    )
    txt = read_yolo(os.path.join(COCO128, "images"), os.path.join(COCO128, "labels"), names)
    assert not txt.problems and len(txt.records) == len(coco.records) == 128
    assert coco.names == txt.names
    count = Counter()
    json_records, txt_records = by_file(coco), by_file(txt)
    for name, ref in json_records.items():
        got = txt_records[name]
        assert (got.height, got.width) == (ref.height, ref.width)
        scale = np.array([ref.width, ref.height] * 2)
        assert len(got.boxes) == len(ref.boxes), name
        if len(ref.boxes) == 0:
            continue
        diff = np.abs(got.boxes[:, None] / scale - ref.boxes[None] / scale).max(axis=-1)
        match = diff.argmin(axis=0)  # each json box's nearest txt box
        assert (diff[match, np.arange(len(ref.boxes))] < 2e-3).all(), name
        assert sorted(match.tolist()) == list(range(len(ref.boxes))), name  # one to one
        np.testing.assert_array_equal(got.classes[match], ref.classes)
        count.update(ref.classes.tolist())
    assert sum(count.values()) == 929
    assert count == Counter(c for r in txt.records for c in r.classes.tolist())


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_dataset_is_cleaned_counted_and_nothing_valid_is_lost(tmp_path, fmt):
    root = str(tmp_path)
    specs = write_all_formats(root, count=10)
    clean = by_file(load_dataset(specs[fmt], "train"))
    damage_annotations(fmt, root)
    damage_images(root)
    ds = load_dataset(specs[fmt], "train")
    assert ds.problems == {
        "image_missing": 1,
        "image_truncated": 1,
        "image_not_an_image": 1,
        "image_grayscale": 1,
        "image_rgba": 1,
        "image_16bit": 1,
        "box_zero_size": 1,
        "box_clipped": 1,
        "box_outside_image": 1,
        "class_unknown": 1,
        "annotation_malformed": 1,
    }
    for reason, examples in ds.problems.examples.items():
        assert examples and all(isinstance(e, str) and e for e in examples), reason
    assert any("img4" in e for e in ds.problems.examples["image_missing"])
    records = by_file(ds)
    assert set(records) == set(clean) - {"img4.jpg", "img5.jpg", "img6.jpg"}
    for name, record in records.items():  # every good box kept, plus the clipped one
        extra = 1 if name == "img0.jpg" else 0
        assert len(record.boxes) == len(clean[name].boxes) + extra, name
        np.testing.assert_allclose(
            record.boxes[: len(clean[name].boxes)], clean[name].boxes, atol=1e-3
        )
        clipped = record.boxes[len(clean[name].boxes) :]
        assert (clipped[:, 2] <= record.width).all()
        image, boxes, _ = prepare_example(record, 64, None, np.random.default_rng(0))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    truth = ground_truth(ds)  # evaluation sees exactly the kept images and boxes
    assert sorted(truth.getImgIds()) == sorted(r.image_id for r in ds.records)
    kept_boxes = sum(len(r.boxes) + len(r.ignore) for r in ds.records)
    assert len(truth.getAnnIds()) == kept_boxes


def test_converted_images_read_as_8_bit_rgb(tmp_path):
    image = np.zeros((8, 8, 3), np.uint16)
    image[..., 2] = 65535  # red in BGR order, full 16-bit scale
    path = str(tmp_path / "deep.png")
    cv2.imwrite(path, image)
    assert inspect_image(path) == (None, ["image_16bit"], (8, 8))
    np.testing.assert_array_equal(read_image(path)[0, 0], [255, 0, 0])
    cv2.imwrite(path, np.full((5, 7), 100, np.uint8))
    assert inspect_image(path) == (None, ["image_grayscale"], (5, 7))
    assert read_image(path).shape == (5, 7, 3)
    open(path, "wb").write(b"")
    assert inspect_image(path)[0] == "image_not_an_image"
    assert inspect_image(str(tmp_path / "nothing.png"))[0] == "image_missing"


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_annotation_path_is_an_error_naming_it(tmp_path, fmt):
    specs = write_all_formats(str(tmp_path), count=3)
    with open(specs[fmt]) as f:
        spec = yaml.safe_load(f)
    key = "labels" if fmt == "yolo" else "annotations"
    spec["val"] = {**spec["val"], key: "nowhere"}
    with open(specs[fmt], "w") as f:
        yaml.safe_dump(spec, f)
    with pytest.raises(ValueError, match=f"val.{key}: (file|folder) not found: .*nowhere"):
        load_dataset(specs[fmt], "val")


def test_broken_annotation_files_skip_only_their_image(tmp_path):
    specs = write_all_formats(str(tmp_path), count=4)
    open(tmp_path / "xml" / "img0.xml", "w").write("<annotation><object>")
    voc = load_dataset(specs["voc"], "train")
    assert voc.problems == {"annotation_malformed": 1}
    assert set(by_file(voc)) == {"img1.jpg", "img2.jpg", "img3.jpg"}
    open(tmp_path / "labels" / "img0.txt", "wb").write(b"\xff\xfe\x00garbage")
    yolo = load_dataset(specs["yolo"], "train")
    assert yolo.problems == {"annotation_malformed": 1}
    assert len(by_file(yolo)) == 4


def test_yolo_names_from_an_ultralytics_yaml_and_voc_names_from_the_xml(tmp_path):
    specs = write_all_formats(str(tmp_path), count=4)
    (tmp_path / "data.yaml").write_text("names:\n  0: red\n  1: green\n  2: blue\n")
    spec = yaml.safe_load(open(specs["yolo"]))
    spec["names"] = "data.yaml"
    yaml.safe_dump(spec, open(specs["yolo"], "w"))
    assert load_dataset(specs["yolo"], "train").names == NAMES
    spec = yaml.safe_load(open(specs["voc"]))
    del spec["names"]
    yaml.safe_dump(spec, open(specs["voc"], "w"))
    found = load_dataset(specs["voc"], "train")
    assert found.names == sorted({NAMES[c] for r in found.records for c in r.classes})
    bare = {"format": "yolo", "train": {"images": "images", "labels": "labels"}}
    yaml.safe_dump(bare, open(specs["yolo"], "w"))
    with pytest.raises(ValueError, match="names: required for format yolo"):
        load_dataset(specs["yolo"], "train")
