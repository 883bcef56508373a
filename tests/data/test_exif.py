"""One EXIF orientation convention everywhere: labels refer to the image as displayed.

Each test image is drawn as displayed (a portrait 100 x 160 px photo with a red and a blue
rectangle at known places), then stored the way a camera does: the pixels turned by the
inverse of its EXIF orientation, the tag saying how to turn them back. Every reader, the
image check, the training and evaluation pipelines, the packed path and the way back to
original pixels must then see the displayed image and its known boxes.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from detector.cli.data import main as data_main
from detector.data.augment import prepare_example
from detector.data.coco import read_coco
from detector.data.files import decode_image, image_size, read_image
from detector.data.pipeline import make_eval_dataset
from detector.data.policy import check_images, inspect_image
from detector.data.records import Dataset, Record
from detector.data.spec import load_dataset
from detector.utils.boxes import to_image_pixels, to_input_pixels
from tests.helpers.data import write_specs

WIDTH, HEIGHT = 100, 160  # displayed size
BOXES = np.array([[10, 20, 50, 60], [60, 100, 90, 150]], np.float32)  # xyxy, displayed
CLASSES = np.array([0, 1], np.int32)
COLOURS = [(255, 0, 0), (0, 0, 255)]
NAMES = ["red", "blue"]
ORIENTATIONS = (1, 3, 6, 8)
# The transpose that stores a displayed image under each orientation (the inverse of the
# one a viewer applies, which `ImageOps.exif_transpose` checks below).
STORE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def displayed_image() -> np.ndarray:
    """uint8 (HEIGHT, WIDTH, 3) RGB: grey with the two rectangles of BOXES."""
    image = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    for (x1, y1, x2, y2), colour in zip(BOXES.astype(int), COLOURS, strict=True):
        image[y1:y2, x1:x2] = colour
    return image


def save_oriented(image: np.ndarray, path: str, orientation: int, **options) -> None:
    """Stores `image` (as displayed) with the EXIF `orientation` that displays it so."""
    stored = Image.fromarray(image)
    if orientation in STORE:
        stored = stored.transpose(STORE[orientation])
    exif = stored.getexif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif.tobytes(), **options)
    with Image.open(path) as check:  # the test's own premise, checked with Pillow
        shown = np.asarray(ImageOps.exif_transpose(check).convert("RGB"))
    assert shown.shape == image.shape


def assert_shows_the_boxes(image: np.ndarray, boxes: np.ndarray) -> None:
    """Each box's inner part has its rectangle's colour (JPEG: within a tolerance)."""
    for (x1, y1, x2, y2), colour in zip(np.round(boxes).astype(int), COLOURS, strict=True):
        inner = image[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].reshape(-1, 3).astype(float)
        assert inner.size and np.abs(inner.mean(axis=0) - colour).max() < 30, (boxes, colour)


def write_dataset(root: str) -> dict[str, str]:
    """One JPEG per orientation of ORIENTATIONS under root/images, labelled on the
    displayed image in yolo, voc and coco form; returns {format: spec path}."""
    images = os.path.join(root, "images")
    os.makedirs(images)
    records = []
    for i, orientation in enumerate(ORIENTATIONS):
        path = os.path.join(images, f"o{orientation}.jpg")
        save_oriented(displayed_image(), path, orientation, quality=95)
        no_ignore = np.zeros((0, 4), np.float32)
        records.append(Record(i + 1, path, HEIGHT, WIDTH, BOXES, CLASSES, no_ignore))
    return write_specs(root, Dataset(records, list(NAMES), [1, 2], None))


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, str]:
    return write_dataset(str(tmp_path_factory.mktemp("exif")))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_size_pixels_and_check_are_those_of_the_displayed_image(tmp_path, orientation):
    path = str(tmp_path / "photo.jpg")
    save_oriented(displayed_image(), path, orientation, quality=95)
    assert image_size(path) == (HEIGHT, WIDTH)
    image = read_image(path)
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert_shows_the_boxes(image, BOXES)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(decode_image(f.read(), "packed"), image)
    fatal, conversions, size = inspect_image(path)
    assert fatal is None and size == (HEIGHT, WIDTH)
    assert conversions == ([] if orientation == 1 else ["image_exif_rotated"])


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "tif"])
def test_every_orientation_decodes_as_pillow_displays_it(tmp_path, fmt):
    pattern = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    options = {"jpg": {"quality": 100}, "webp": {"lossless": True}}.get(fmt, {})
    for orientation in range(1, 9):
        path = str(tmp_path / f"o{orientation}.{fmt}")
        save_oriented(pattern, path, orientation, **options)
        with Image.open(path) as image:
            pillow = np.asarray(ImageOps.exif_transpose(image).convert("RGB")).astype(int)
        got = read_image(path)
        assert image_size(path) == got.shape[:2] == (HEIGHT, WIDTH), orientation
        assert inspect_image(path)[2] == (HEIGHT, WIDTH), orientation
        # JPEG: two decoders of one file differ by rounding; the layout is what matters
        tolerance = 3 if fmt == "jpg" else 0
        assert np.abs(got - pillow).mean() <= tolerance, (fmt, orientation)


@pytest.mark.parametrize("fmt", ["yolo", "voc", "coco"])
def test_readers_give_the_displayed_size_and_boxes(specs, fmt):
    dataset = load_dataset(specs[fmt], "train")
    assert len(dataset.records) == len(ORIENTATIONS)
    # counted once per rotated image, nothing else wrong: sizes agree, no box clipped
    assert dict(dataset.problems) == {"image_exif_rotated": 3}
    for record in dataset.records:
        assert (record.height, record.width) == (HEIGHT, WIDTH), record.path
        np.testing.assert_allclose(record.boxes, BOXES, atol=1e-3)
        np.testing.assert_array_equal(record.classes, CLASSES)


@pytest.mark.parametrize("letterbox", [False, True])
def test_training_examples_keep_the_boxes_on_their_objects(specs, letterbox):
    for record in load_dataset(specs["yolo"], "train").records:
        image, boxes, classes = prepare_example(
            record, 64, None, np.random.default_rng(0), letterbox
        )
        want = to_input_pixels(BOXES, HEIGHT, WIDTH, 64, letterbox)
        np.testing.assert_allclose(boxes, want, atol=1e-4)  # uniform scale: no rescaling
        np.testing.assert_array_equal(classes, CLASSES)
        assert_shows_the_boxes(image, want)
        if not letterbox:  # plain resize: x by 64/100, y by 64/160
            np.testing.assert_allclose(boxes[0], [6.4, 8.0, 32.0, 24.0], atol=1e-4)


@pytest.mark.parametrize("letterbox", [False, True])
def test_evaluation_images_and_boxes_back_in_original_pixels(specs, letterbox):
    records = load_dataset(specs["coco"], "val").records
    size = 128
    batches = list(make_eval_dataset(records, size, 3, letterbox).as_numpy_iterator())
    images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
    indices = np.concatenate([b[1] for b in batches])
    assert images.shape == (len(ORIENTATIONS), size, size, 3)
    for image, index in zip(images, indices, strict=True):
        record = records[int(index)]
        # a perfect detector's boxes on this input ...
        on_input = to_input_pixels(BOXES, HEIGHT, WIDTH, size, letterbox)
        assert_shows_the_boxes(image, on_input)
        # ... map back onto the displayed image's pixels, where the labels are
        back = to_image_pixels(on_input, record.height, record.width, size, letterbox)
        np.testing.assert_allclose(back, BOXES, atol=1e-3)


def test_packed_images_decode_as_displayed(specs, tmp_path):
    assert data_main(["pack", specs["voc"], str(tmp_path / "p"), "--shards", "2"]) == 0
    packed = load_dataset(str(tmp_path / "p" / "spec.yaml"), "train")
    assert dict(packed.problems) == {"image_exif_rotated": 3}
    found = packed.records.read_images(range(len(packed.records)))
    for i, record in enumerate(packed.records):
        assert (record.height, record.width) == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(found[i], read_image(record.path))
        image, boxes, _ = prepare_example(
            record, 64, None, np.random.default_rng(0), False, found[i]
        )
        np.testing.assert_allclose(
            boxes, to_input_pixels(BOXES, HEIGHT, WIDTH, 64, False), atol=1e-4
        )
    files = load_dataset(specs["voc"], "train").records
    by_path = {r.path: i for i, r in enumerate(files)}
    from_shards = next(make_eval_dataset(packed.records, 64, 8).as_numpy_iterator())[0]
    from_files = next(make_eval_dataset(files, 64, 8).as_numpy_iterator())[0]
    for i, record in enumerate(packed.records):
        np.testing.assert_array_equal(from_shards[i], from_files[by_path[record.path]])


def test_annotation_of_the_stored_size_is_counted_with_a_hint(specs, tmp_path):
    root = os.path.dirname(specs["coco"])
    with open(os.path.join(root, "coco.json")) as f:
        data = json.load(f)
    for image in data["images"]:
        if image["file_name"] == "o6.jpg":  # a tool that ignored the orientation
            image["width"], image["height"] = HEIGHT, WIDTH
    path = str(tmp_path / "stored.json")
    with open(path, "w") as f:
        json.dump(data, f)
    dataset = check_images(read_coco(path, os.path.join(root, "images")))
    assert dataset.problems["image_size_mismatch"] == 1
    (example,) = dataset.problems.examples["image_size_mismatch"]
    assert "o6.jpg: 160x100 px, annotated 100x160" in example and "EXIF" in example
    record = next(r for r in dataset.records if r.path.endswith("o6.jpg"))
    _, boxes, _ = prepare_example(record, 100, None, np.random.default_rng(0))
    # the boxes follow the real (displayed) image, as the policy says: x by 100/160, y by 160/100
    real = record.boxes * np.array([WIDTH / HEIGHT, HEIGHT / WIDTH] * 2, np.float32)
    want = to_input_pixels(real, HEIGHT, WIDTH, 100, False)
    np.testing.assert_allclose(boxes, want[(want[:, 2:] - want[:, :2] >= 1).all(axis=1)], atol=1e-3)


def test_check_tool_counts_the_rotated_images(specs, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert data_main(["check", specs["yolo"], "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["splits"]["train"]["problems"] == {"image_exif_rotated": 3}
    assert report["splits"]["train"]["boxes"] == 2 * len(ORIENTATIONS)
    printed = capsys.readouterr().out
    assert "image_exif_rotated" in printed and "labels read on the displayed image" in printed
