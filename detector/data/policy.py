"""The bad-input policy, in one place, for every reader.

Readers turn their files into flat arrays of boxes and call `clean_boxes`, which drops or
clips each box by the same rules; `check_images` then opens every image once, before
training, and drops what cannot be used. Every case is counted in `Dataset.problems`
under one of the reasons of `detector.data.records.PROBLEM_REASONS`:

- boxes: unknown class (name, category id or index) -> dropped; a NaN/inf coordinate ->
  dropped; zero or negative width/height -> dropped; wholly outside the image -> dropped;
  partly outside -> clipped to the image and kept;
- images: missing file, not an image, undecodable, truncated (ends before its JPEG EOI /
  PNG IEND; bytes after it are fine), or a header over `max_pixels` pixels (never
  decoded) -> the image is skipped;
  grayscale, with an alpha channel, or 16 bits per channel -> converted to 8-bit RGB when
  read, kept; an EXIF orientation other than 1 -> applied, the labels are read on the
  displayed image (`detector.data.files`), kept; a displayed size that differs from the
  annotation's -> the boxes are rescaled to the real image when it is read
  (`detector.data.augment.prepare_example`), kept;
- annotation entries, lines or files that do not parse -> skipped, everything valid
  around them is kept (each reader counts these as `annotation_malformed`);
- images without objects are kept as negatives (not a problem).
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import cv2
import numpy as np

from detector.data.files import decode_oriented
from detector.data.image_checks import MAX_PIXELS, ImageTooLarge, check_pixels, is_truncated
from detector.data.records import Dataset, Problems, Record

# Pixels a box may stick out of its image before it counts as clipped: normalised
# coordinates written with 6 decimals overshoot the border by rounding alone.
CLIP_TOLERANCE = 0.01

# File signatures of the formats OpenCV decodes that we recognise as images.
_SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"GIF8", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"RIFF", "webp"),
)


def clean_boxes(
    xyxy: np.ndarray,
    known_class: np.ndarray,
    limits: np.ndarray,
    problems: Problems,
    where: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Applies the box rules of the module docstring to N boxes at once.

    Args:
        xyxy: float64 (N, 4). Boxes in pixels of their image (continuous coordinates).
        known_class: bool (N,). Whether the box's class is one of the dataset's classes.
        limits: float64 (N, 4). (width, height, width, height) of each box's image.
        problems: Problems. Counted into, each box under the first reason that applies.
        where: list of N str, optional. A label per box ("file: line 3") for the examples.

    Returns:
        keep bool (N,); boxes float64 (N, 4), clipped to their image.
    """
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    keep = np.ones(len(xyxy), bool)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(xyxy).all(axis=1)
        positive = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        clipped = np.clip(xyxy, 0.0, limits)
        empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
        moved = (np.abs(clipped - xyxy) > CLIP_TOLERANCE).any(axis=1)
    for reason, bad in (
        ("class_unknown", ~np.asarray(known_class, bool)),
        ("box_not_finite", ~finite),
        ("box_zero_size", ~positive),
        ("box_outside_image", empty),
    ):
        newly = keep & bad
        _count(problems, reason, newly, xyxy, where)
        keep &= ~bad
    _count(problems, "box_clipped", keep & moved, xyxy, where)
    return keep, clipped


def _count(problems: Problems, reason: str, mask: np.ndarray, xyxy, where) -> None:
    """Counts `mask.sum()` boxes under `reason`, with the first few as examples."""
    hits = np.flatnonzero(mask)
    for i in hits[:3]:
        label = where[i] if where is not None else f"box {i}"
        problems.add(reason, f"{label}: xyxy {np.round(xyxy[i], 1).tolist()}")
    problems.add(reason, None, len(hits) - min(len(hits), 3))


def group(image_index: np.ndarray, values: np.ndarray, num_images: int) -> list[np.ndarray]:
    """Split `values` (N, ...) into one array per image 0..num_images-1 (empty if none)."""
    image_index = np.asarray(image_index, np.int64)
    order = np.argsort(image_index, kind="stable")
    bounds = np.cumsum(np.bincount(image_index, minlength=num_images))[:-1]
    return np.split(values[order], bounds)


def build_records(
    images: list[tuple[int, str, tuple[int, int]]],
    image_index: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    ignore: np.ndarray | None = None,
) -> list[Record]:
    """One `Record` per image from the flat arrays of kept boxes.

    Args:
        images: list of (image id, path, (height, width)), one per record.
        image_index: int (N,). Position in `images` of each box.
        boxes: float (N, 4). xyxy pixels, already through `clean_boxes`.
        classes: int (N,). Class index of each box.
        ignore: bool (N,) or None. Which boxes are ignore regions (VOC difficult).
    """
    ignore = np.zeros(len(boxes), bool) if ignore is None else np.asarray(ignore, bool)
    num = len(images)
    grouped = group(image_index[~ignore], np.asarray(boxes, np.float32)[~ignore], num)
    labels = group(image_index[~ignore], np.asarray(classes, np.int32)[~ignore], num)
    regions = group(image_index[ignore], np.asarray(boxes, np.float32)[ignore], num)
    return [
        Record(image_id, path, int(size[0]), int(size[1]), grouped[i], labels[i], regions[i])
        for i, (image_id, path, size) in enumerate(images)
    ]


def image_kind(head: bytes) -> str | None:
    """The image format a file's first bytes announce, or None."""
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            if kind == "webp" and head[8:12] != b"WEBP":
                return None
            return kind
    return None


def inspect_image(
    path: str, max_pixels: int = MAX_PIXELS
) -> tuple[str | None, list[str], tuple[int, int] | None]:
    """Opens one image the way training will and says what is wrong with it; an image
    whose header declares over `max_pixels` pixels is not decoded.

    Returns:
        (fatal reason or None, conversion reasons, (height, width) as displayed or None).
        A fatal reason is one of image_missing, image_not_an_image, image_unreadable,
        image_too_large, image_truncated; conversions are among image_exif_rotated,
        image_grayscale, image_rgba, image_16bit.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "image_missing", [], None
    except OSError:
        return "image_unreadable", [], None
    kind = image_kind(data[:16])
    if kind is None:
        return "image_not_an_image", [], None
    try:
        check_pixels(data, path, max_pixels)
    except ImageTooLarge:
        return "image_too_large", [], None
    if is_truncated(data, kind):  # bytes after the end marker are fine (motion photos)
        return "image_truncated", [], None
    image, orientation = decode_oriented(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        return "image_unreadable", [], None
    conversions = [] if orientation == 1 else ["image_exif_rotated"]
    if image.ndim == 2 or image.shape[2] == 1:
        conversions.append("image_grayscale")
    elif image.shape[2] == 4:
        conversions.append("image_rgba")
    if image.dtype != np.uint8:
        conversions.append("image_16bit")
    return None, conversions, image.shape[:2]


def check_images(
    dataset: Dataset, threads: int | None = None, max_pixels: int = MAX_PIXELS
) -> Dataset:
    """Opens every image of `dataset` once; returns it without the unusable ones.

    Fatal problems skip the record; conversions and a size differing from the
    annotation's are counted and the record is kept (see the module docstring). Images
    over `max_pixels` pixels are skipped from their header, never decoded.
    """
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        found = list(
            pool.map(lambda record: inspect_image(record.path, max_pixels), dataset.records)
        )
    problems = Problems().merge(dataset.problems)
    kept: list[Record] = []
    for record, (fatal, conversions, size) in zip(dataset.records, found, strict=True):
        if fatal is not None:
            problems.add(fatal, record.path)
            continue
        for reason in conversions:
            problems.add(reason, record.path)
        if size != (record.height, record.width):
            problems.add("image_size_mismatch", _mismatch(record, size, conversions))
        kept.append(record)
    return replace(dataset, records=kept, problems=problems)


def _mismatch(record: Record, size: tuple[int, int], conversions: list[str]) -> str:
    """The example of an image whose displayed size is not its annotation's."""
    text = f"{record.path}: {size[0]}x{size[1]} px, annotated {record.height}x{record.width}"
    if "image_exif_rotated" in conversions and size == (record.width, record.height):
        text += " (the size before its EXIF rotation: annotated on the stored image?)"
    return text
