"""Tests of the training augmentation and the resize to the network input."""

import cv2
import numpy as np
import pytest

from detector.data.augment import (
    build_augmenter,
    draw_matrix,
    prepare_example,
    resize,
    resize_matrix,
    warp,
)
from detector.data.files import read_image
from detector.data.records import Record
from tests.helpers.data import AUGMENT

pytestmark = pytest.mark.filterwarnings("error")


# --- augmentation --------------------------------------------------------------------------


def _record(tmp_path, boxes, classes, height: int = 60, width: int = 100) -> Record:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path = str(tmp_path / "img.png")
    cv2.imwrite(path, image)
    return Record(
        image_id=1,
        path=path,
        height=height,
        width=width,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        classes=np.asarray(classes, np.int32),
        ignore=np.zeros((0, 4), np.float32),
    )


def test_read_image_is_rgb_and_names_unreadable_files(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    image = read_image(str(tmp_path / "red.png"))
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8
    assert (image[..., 0] == 255).all() and (image[..., 2] == 0).all()
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg: cannot read image"):
        read_image(str(tmp_path / "broken.jpg"))


def test_resize_scales_boxes_per_axis():
    image, boxes = resize(np.zeros((50, 100, 3), np.uint8), np.array([[10, 5, 20, 25]]), 200)
    assert image.shape == (200, 200, 3)
    np.testing.assert_allclose(boxes, [[20, 20, 40, 100]])
    assert boxes.dtype == np.float32


def test_hflip_mirrors_the_box(tmp_path):
    record = _record(tmp_path, [[10, 20, 30, 50]], [2])
    none = {"scale": (1.0, 1.0), "translate": 0.0, "hue": 0.0, "saturation": 1.0, "exposure": 1.0}
    augmenter = build_augmenter(**{**AUGMENT, **none, "hflip": 1.0})
    image, boxes, classes = prepare_example(record, 100, augmenter, np.random.default_rng(0))
    np.testing.assert_allclose(boxes * [1, 60 / 100, 1, 60 / 100], [[70, 20, 90, 50]], atol=1e-4)
    np.testing.assert_array_equal(classes, [2])
    original = cv2.resize(read_image(record.path), (100, 100), interpolation=cv2.INTER_LINEAR)
    # one warpAffine (fixed-point, 1/32 px) vs cv2.resize: at most one grey level apart
    diff = np.abs(image.astype(int) - original[:, ::-1])
    assert diff.max() <= 1


def test_augmented_boxes_stay_inside_and_valid(tmp_path):
    boxes = [[0, 0, 100, 60], [0, 0, 8, 8], [90, 50, 100, 60], [30, 10, 60, 40]]
    record = _record(tmp_path, boxes, [0, 1, 2, 3])
    augmenter = build_augmenter(**{**AUGMENT, "scale": (0.5, 1.5), "translate": 0.3})
    counts = []
    for seed in range(40):
        image, out, classes = prepare_example(record, 64, augmenter, np.random.default_rng(seed))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert out.dtype == np.float32 and classes.dtype == np.int32 and len(out) == len(classes)
        assert (out >= 0).all() and (out <= 64).all()
        assert (out[:, 2:] - out[:, :2] >= 1).all()
        counts.append(len(out))
    assert min(counts) < 4 and max(counts) == 4  # some boxes leave the image, not all do


def test_prepare_example_is_reproducible_and_handles_no_boxes(tmp_path):
    record = _record(tmp_path, np.zeros((0, 4)), [])
    augmenter = build_augmenter(**AUGMENT)
    a = prepare_example(record, 32, augmenter, np.random.default_rng(7))
    b = prepare_example(record, 32, augmenter, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1].shape == (0, 4) and a[2].shape == (0,)
    assert a[1].dtype == np.float32 and a[2].dtype == np.int32
    plain = prepare_example(record, 32, None, np.random.default_rng(0))
    assert plain[0].shape == (32, 32, 3) and plain[1].shape == (0, 4)


def test_prepare_example_drops_degenerate_boxes_and_follows_the_real_size(tmp_path):
    record = _record(tmp_path, [[10, 10, 10.5, 30], [10, 10, 40, 30]], [0, 1])
    _, boxes, classes = prepare_example(record, 100, None, np.random.default_rng(0))
    np.testing.assert_allclose(boxes, [[10, 10 * 100 / 60, 40, 30 * 100 / 60]], rtol=1e-6)
    np.testing.assert_array_equal(classes, [1])
    # Annotated as 120 px high, the image is 60: boxes follow the real image.
    wrong = Record(**{**record.__dict__, "height": 120, "boxes": record.boxes * [1, 2, 1, 2]})
    _, scaled, _ = prepare_example(wrong, 100, None, np.random.default_rng(0))
    np.testing.assert_allclose(scaled, boxes, rtol=1e-6)


def _old_example_pixels(image, matrix, size, hsv):
    """The training example's pixels as made before the BGR / 4-channel changes (the
    reference): a 3-channel RGB warp, then the 3-channel-table LUT in HSV."""
    out = warp(image, matrix, size)
    if hsv is None:
        return out
    dhue, dsat, dexp = hsv
    x = np.arange(256, dtype=np.float32)
    lut = np.stack(
        [
            np.mod(x + dhue * 180.0, 180.0).astype(np.uint8),
            np.clip(x * dsat, 0, 255).astype(np.uint8),
            np.clip(x * dexp, 0, 255).astype(np.uint8),
        ],
        axis=-1,
    )[None]
    return cv2.cvtColor(cv2.LUT(cv2.cvtColor(out, cv2.COLOR_RGB2HSV), lut), cv2.COLOR_HSV2RGB)


@pytest.mark.parametrize("colour", [True, False])
def test_bgr_input_and_the_4_channel_warp_keep_the_pixels_exactly(tmp_path, colour):
    rgb = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    rgb[10:30, 20:40] = (250, 30, 90)  # a saturated patch: hue and clipping matter
    record = _record(tmp_path, [[5, 5, 60, 40]], [0], 50, 70)
    quiet = {} if colour else {"hue": 0.0, "saturation": 1.0, "exposure": 1.0}
    augmenter = build_augmenter(**{**AUGMENT, "hflip": 0.5, **quiet})
    for seed in range(6):
        draw = augmenter.draw(np.random.default_rng(seed))
        assert (draw.hsv is not None) == colour
        matrix = draw_matrix(draw, 48) @ resize_matrix(50, 70, 48)
        want = _old_example_pixels(rgb, matrix, 48, draw.hsv)
        got = prepare_example(record, 48, augmenter, np.random.default_rng(seed), image=rgb)
        np.testing.assert_array_equal(got[0], want)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        from_bgr = prepare_example(
            record, 48, augmenter, np.random.default_rng(seed), image=bgr, bgr=True
        )
        np.testing.assert_array_equal(from_bgr[0], want)
        np.testing.assert_array_equal(from_bgr[1], got[1])
    plain = prepare_example(record, 48, None, None, image=rgb)[0]
    from_bgr = prepare_example(record, 48, None, None, image=rgb[..., ::-1].copy(), bgr=True)
    np.testing.assert_array_equal(from_bgr[0], plain)
