"""Tests of mosaic and mixup (`detector.data.mosaic.ExampleMaker`)."""

import os

import cv2
import numpy as np
import pytest

from detector.data.augment import build_augmenter, prepare_example
from detector.data.mosaic import ExampleMaker
from detector.data.records import Record, RecordList

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
QUIET = {"hue": 0.0, "saturation": 1.0, "exposure": 1.0}


def coloured_records(folder, count: int = 4) -> RecordList:
    """Grey images, each with two boxes filled with its own colour (class = image index);
    the boxes reach the image edges, so quadrant borders cut them."""
    records = []
    for i in range(count):
        height, width = 80 + 10 * i, 120 - 10 * i
        image = np.full((height, width, 3), 60, np.uint8)
        boxes = np.array(
            [[0, 0, width // 2, height // 3], [width // 3, height // 2, width, height]]
        )
        for x1, y1, x2, y2 in boxes:
            image[y1:y2, x1:x2] = COLOURS[i]
        path = str(folder / f"img{i}.png")
        cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        records.append(
            Record(i, path, height, width, boxes.astype(np.float32), np.full(2, i, np.int32),
                   np.zeros((0, 4), np.float32))
        )  # fmt: skip
    return RecordList(records)


def augmenter(**overrides):
    args = {"hflip": 0.5, "scale": (0.75, 1.25), "translate": 0.2, "min_visibility": 0.3}
    return build_augmenter(**{**args, **QUIET, **overrides})


def test_mosaic_boxes_lie_on_their_own_images_pixels(tmp_path):
    records = coloured_records(tmp_path)
    maker = ExampleMaker(records, augmenter(), False, 80, mosaic=1.0)
    seen = set()
    for seed in range(30):
        image, boxes, classes = maker.make(seed % 4, 64, np.random.default_rng(seed))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert (boxes >= 0).all() and (boxes <= 64).all()
        for (x1, y1, x2, y2), c in zip(boxes, classes, strict=True):
            inner = image[int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
            if inner.size:
                match = np.all(np.abs(inner.astype(int) - COLOURS[c]) < 40, axis=-1)
                assert match.mean() > 0.95, (seed, c, x1, y1, x2, y2)
            seen.add(int(c))
    assert seen == {0, 1, 2, 3}  # all four images' boxes appear


def test_mosaic_is_a_function_of_the_generator_seed(tmp_path):
    maker = ExampleMaker(coloured_records(tmp_path), augmenter(), False, 80, 1.0, 0.5)
    a = maker.make(1, 64, np.random.default_rng([3, 17]))
    b = maker.make(1, 64, np.random.default_rng([3, 17]))
    c = maker.make(1, 64, np.random.default_rng([3, 18]))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_mixup_blends_two_examples_and_keeps_both_sets_of_boxes(tmp_path):
    records = coloured_records(tmp_path)
    maker = ExampleMaker(records, None, False, 0, mosaic=0.0, mixup=1.0)
    for seed in range(6):
        image, boxes, classes = maker.make(0, 64, np.random.default_rng(seed))
        # replay the draws: the mixup test, the partner's Generator, its record
        rng = np.random.default_rng(seed)
        rng.random()
        other = int(np.random.default_rng(rng.integers(2**63)).integers(len(records)))
        first = prepare_example(records[0], 64, None, None)
        second = prepare_example(records[other], 64, None, None)
        np.testing.assert_allclose(boxes, np.concatenate([first[1], second[1]]))
        np.testing.assert_array_equal(classes, [0, 0, other, other])
        ratio = rng.beta(32, 32)
        blend = first[0] * ratio + second[0] * (1 - ratio)
        assert np.abs(image - blend).max() <= 1.0


def test_unreadable_images_are_substituted_and_named_once(tmp_path, capfd):
    records = coloured_records(tmp_path)
    maker = ExampleMaker(records, None, False, 0)
    (tmp_path / "img1.png").write_bytes(b"truncated")
    for _ in range(3):
        image, boxes, classes = maker.make(1, 64, np.random.default_rng(0))
    expected = prepare_example(records[2], 64, None, None)
    np.testing.assert_array_equal(image, expected[0])
    np.testing.assert_array_equal(classes, [2, 2])
    assert maker.unreadable == {records[1].path: 3}
    assert capfd.readouterr().err.count("img1.png: cannot read image") == 1
    for record in records:  # the data went away: an error, not training on blanks
        os.remove(record.path)
    with pytest.raises(ValueError, match=r"data: \d+ training images in a row cannot be read"):
        maker.make(0, 64, np.random.default_rng(0))


@pytest.mark.parametrize("letterbox", [False, True])
def test_reduced_decode_keeps_the_boxes_on_their_pixels(tmp_path, letterbox):
    """A big JPEG is decoded at 1/4 size; the boxes still frame the coloured pixels."""
    image = np.full((1000, 1400, 3), 60, np.uint8)
    image[200:600, 300:900] = (255, 0, 0)
    path = str(tmp_path / "big.jpg")
    cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    box = np.array([[300, 200, 900, 600]], np.float32)
    record = Record(0, path, 1000, 1400, box, np.zeros(1, np.int32), np.zeros((0, 4), np.float32))
    maker = ExampleMaker(RecordList([record]), augmenter(translate=0.0), letterbox, 80)
    assert max(maker.read(0).shape[:2]) < 400  # reduced, not the full 1400
    out, boxes, _ = maker.make(0, 64, np.random.default_rng(1))
    x1, y1, x2, y2 = boxes[0]
    inner = out[int(y1) + 2 : int(y2) - 1, int(x1) + 2 : int(x2) - 1]
    assert (np.abs(inner.astype(int) - (255, 0, 0)).max(axis=-1) < 60).mean() > 0.95
