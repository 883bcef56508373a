"""tools/coco_crops.py: the held-out-like single-class set docs/results.md reports."""

import os
import sys

import pytest

from detector.data.spec import load_dataset

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import coco_crops  # noqa: E402

COCO128 = os.path.join(ROOT, "..", "shared", "data", "coco128")


def test_a_crop_labels_what_it_holds_and_refuses_what_it_cuts():
    crop = (0, 0, 100, 100)
    inside, sliver = (10, 10, 50, 90), (95, 10, 150, 40)  # 100 % in; 5 of 55 px wide in
    assert coco_crops.crop_labels(crop, [inside, sliver], []) == [inside]
    assert coco_crops.crop_labels(crop, [(80, 0, 105, 100)], []) == [(80, 0, 100, 100)]  # 80 %
    assert coco_crops.crop_labels(crop, [inside, (50, 10, 150, 90)], []) is None  # cut in half
    assert coco_crops.crop_labels(crop, [inside], [(90, 90, 120, 120)]) is None  # crowd
    assert coco_crops.crop_labels(crop, [(200, 200, 300, 300)], []) is None  # nothing in it


@pytest.mark.skipif(not os.path.isdir(COCO128), reason="../shared/data is absent")
def test_coco128_persons_give_the_reported_split_read_without_problems(tmp_path):
    args = [os.path.join(COCO128, "annotations", "instances.json"), os.path.join(COCO128, "images")]
    assert coco_crops.main([*args, str(tmp_path)]) == 0
    train, test = (load_dataset(str(tmp_path / "spec.yaml"), s) for s in ("train", "test"))
    assert (len(train.records), len(test.records)) == (130, 47)  # docs/results.md's figures
    assert train.names == ["person"] and not train.problems and not test.problems
    photo = lambda r: os.path.basename(r.path).rsplit("_", 1)[0]  # noqa: E731
    assert not {photo(r) for r in train.records} & {photo(r) for r in test.records}
    for record in [*train.records, *test.records]:
        width, height, boxes = record.width, record.height, record.boxes
        assert len(boxes) and (boxes[:, :2] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
