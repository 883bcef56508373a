"""A seeded synthetic detection dataset: "cluttered shapes", written in the COCO layout.

Each image has a colour-gradient background with low-frequency texture and sensor noise,
clutter that is not an object (lines, open curves, star-shaped blobs) and 1-8 filled shapes
(circle, rectangle, triangle, ellipse) whose box long side is log-uniform in 14..150 px.
Every box is the tight box of the shape's drawn pixels, xywh in pixels (COCO). Layout:

    out_dir/images/{train,val}/NNNNNN.jpg    out_dir/annotations/{train,val}.json

Every file is written to a temporary name and renamed, the json last, so an interrupted run
never leaves a split that looks complete. The same arguments give byte-identical files.
Command line: ``python -m detector.data synthesize OUT_DIR [--seed N] [--train N] ...``.
"""

import json
import os
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from detector.utils.atomic import atomic_write_bytes

SHAPES = ("circle", "rectangle", "triangle", "ellipse")
DESCRIPTION = "synthetic cluttered shapes"
MIN_IMAGE_SIZE = 64
MIN_SIDE, MAX_SIDE = 14.0, 150.0  # long side of an object's box, pixels
MAX_OBJECTS = 8
MAX_IOU = 0.3  # with any earlier object
MAX_COVER = 0.5  # fraction of an earlier object's box a later (drawn on top) one may cover
MIN_CONTRAST = 90.0  # RGB distance between object colour and the mean background it covers
PLACEMENT_TRIES = 10
NOISE_TILE = 512  # one noise field per split; images take random windows (cheap, seeded)


@dataclass(frozen=True)
class Style:
    """How crowded and cluttered the images are.

    Attributes:
        max_objects: int. Objects per image are drawn from 1..max_objects.
        min_side / max_side: float. Range of an object's box long side, pixels.
        clutter: float. Multiplier on the number of distractors (0 = none, 1 = full).
    """

    max_objects: int = MAX_OBJECTS
    min_side: float = MIN_SIDE
    max_side: float = MAX_SIDE
    clutter: float = 1.0


def make_synthetic(
    out_dir: str,
    seed: int = 0,
    train_images: int = 1000,
    val_images: int = 200,
    size: int = 256,
    classes: Sequence[str] = SHAPES,
) -> None:
    """Write the train and val splits under `out_dir` (layout in the module docstring).

    Args:
        out_dir: str. Dataset root folder; created if needed.
        seed: int. Dataset seed; each split derives its own stream from it.
        train_images / val_images: int. Images per split.
        size: int. Image side, pixels (square images). Defaults to 256.
        classes: sequence of shape names from `SHAPES`; category id = position + 1.
    """
    for split, num_images in (("train", train_images), ("val", val_images)):
        write_split(
            os.path.join(out_dir, "images", split),
            os.path.join(out_dir, "annotations", f"{split}.json"),
            split,
            num_images,
            seed,
            size,
            classes,
        )


def write_split(
    images_dir: str,
    annotation_file: str,
    split: str,
    num_images: int,
    seed: int = 0,
    size: int = 256,
    classes: Sequence[str] = SHAPES,
    style: Style = Style(),
) -> None:
    """Write one split: `num_images` JPEGs (quality 95) into `images_dir`, then its COCO json.

    The random stream depends on (seed, split) only, so one split can be (re)made alone.
    """
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"size: expected >= {MIN_IMAGE_SIZE} pixels, got {size}")
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes: expected distinct names from {list(SHAPES)}, got {classes}")
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(annotation_file)), exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    noise = rng.standard_normal((NOISE_TILE, NOISE_TILE, 3), dtype=np.float32)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, boxes, labels, areas = render_image(rng, size, classes, noise, style)
        file_name = f"{image_id:06d}.jpg"
        _, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        atomic_write_bytes(os.path.join(images_dir, file_name), jpeg.tobytes())
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for box, label, area in zip(boxes.tolist(), labels.tolist(), areas.tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": area,
                    "iscrowd": 0,
                }
            )
    params = {"seed": seed, "split": split, "num_images": num_images, "size": size, **asdict(style)}
    coco = {
        "info": {"description": DESCRIPTION, "synthetic": {**params, "classes": list(classes)}},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)],
    }
    atomic_write_bytes(annotation_file, json.dumps(coco, separators=(",", ":")).encode())


def render_image(
    rng: np.random.Generator,
    size: int,
    classes: Sequence[str],
    noise: np.ndarray,
    style: Style = Style(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One cluttered image and its objects.

    Args:
        rng: numpy Generator. Source of every random choice.
        size: int. Image side, pixels.
        classes: sequence of shape names; labels index into it.
        noise: float32 (T, T, 3), T >= size. Unit Gaussian field to take a window from.
        style: Style. Object count and size range, amount of clutter.

    Returns:
        image uint8 (size, size, 3) BGR; boxes float32 (N, 4) xyxy pixels (tight);
        labels int32 (N,) indices into `classes`; areas float32 (N,) drawn pixels.
    """
    canvas = _background(rng, size)
    _draw_clutter(canvas, rng, style.clutter)
    boxes, labels, areas = [], [], []
    for _ in range(rng.integers(1, style.max_objects + 1)):
        label = int(rng.integers(len(classes)))
        earlier = np.asarray(boxes, np.float32).reshape(-1, 4)
        placed = _place(rng, classes[label], size, earlier, style)
        if placed is None:
            continue
        mask, (x, y) = placed
        region = canvas[y : y + mask.shape[0], x : x + mask.shape[1]]
        region[mask] = _contrasting_colour(rng, region[mask].mean(axis=0))
        boxes.append([x, y, x + mask.shape[1], y + mask.shape[0]])
        labels.append(label)
        areas.append(np.count_nonzero(mask))
    sigma = rng.uniform(2.0, 8.0)
    oy, ox = rng.integers(0, noise.shape[0] - size + 1, 2)
    canvas += sigma * noise[oy : oy + size, ox : ox + size]
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return (
        image,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int32),
        np.asarray(areas, np.float32),
    )


def shape_mask(rng: np.random.Generator, shape: str, long_side: float) -> np.ndarray:
    """A random instance of `shape`, rasterised into its tight box.

    Returns:
        bool (h, w) mask with max(h, w) ~= `long_side` pixels and at least one set pixel on
        each of its four borders (so the mask's frame is the shape's tight box).
    """
    points = _outline(rng, shape)
    points = points - points.min(axis=0)
    points = np.round(points * (long_side - 1) / points.max()).astype(np.int32)
    w, h = points.max(axis=0) + 1
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [points], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def _outline(rng: np.random.Generator, shape: str) -> np.ndarray:
    """Polygon (K, 2) float x, y of a random `shape` at an arbitrary scale and position."""
    angle = rng.uniform(0.0, np.pi)
    if shape == "triangle":
        t = angle + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.uniform(-0.35, 0.35, 3)
        return rng.uniform(0.7, 1.0, (3, 1)) * np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "rectangle":
        aspect = np.exp(rng.uniform(-np.log(3.0), np.log(3.0)))
        corners = np.array([[-aspect, -1.0], [aspect, -1.0], [aspect, 1.0], [-aspect, 1.0]])
        return _rotate(corners, angle if rng.random() < 0.5 else 0.0)
    t = np.linspace(0.0, 2 * np.pi, 64, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "circle":
        return circle
    # Ellipses stay visibly non-round (ratio >= 1.6) so they never pass for circles.
    ratio = np.exp(rng.uniform(np.log(1.6), np.log(3.0)))
    return _rotate(circle * [ratio, 1.0], angle)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """`points` (K, 2) rotated by `angle` radians about the origin."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _place(
    rng: np.random.Generator, shape: str, size: int, boxes: np.ndarray, style: Style
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Mask and top-left (x, y) of a new object inside the image overlapping `boxes` little.

    Returns None when `PLACEMENT_TRIES` random placements all overlap too much.
    """
    max_side = min(style.max_side, size - 2.0)
    for _ in range(PLACEMENT_TRIES):
        long_side = np.exp(rng.uniform(np.log(min(style.min_side, max_side)), np.log(max_side)))
        mask = shape_mask(rng, shape, long_side)
        h, w = mask.shape
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        if not _overlaps(np.array([x, y, x + w, y + h], np.float32), boxes):
            return mask, (x, y)
    return None


def _overlaps(box: np.ndarray, boxes: np.ndarray) -> bool:
    """Whether `box` (4,) has IoU > MAX_IOU with, or covers > MAX_COVER of, any of `boxes`."""
    wh = np.clip(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    new_area = (box[2] - box[0]) * (box[3] - box[1])
    iou = inter / (area + new_area - inter)
    return bool(np.any((iou > MAX_IOU) | (inter > MAX_COVER * area)))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 (size, size, 3): a linear two-colour gradient plus blotchy low-frequency texture.

    Built on a 4x4 grid and upsampled: cubic interpolation keeps the gradient linear and
    smooths the random blotches, at a fraction of the cost of full-resolution arithmetic.
    """
    start, end = rng.uniform(0.0, 255.0, (2, 3)).astype(np.float32)
    angle = rng.uniform(0.0, 2 * np.pi)
    ramp = np.linspace(0.0, 1.0, 4, dtype=np.float32)
    t = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    t = (t - t.min()) / (t.max() - t.min())
    blotches = rng.normal(0.0, rng.uniform(5.0, 25.0), (4, 4, 3)).astype(np.float32)
    grid = start + t[:, :, None] * (end - start) + blotches
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _draw_clutter(canvas: np.ndarray, rng: np.random.Generator, amount: float = 1.0) -> None:
    """Draw distractors that are not objects: straight lines, open curves, star blobs.

    ``amount`` scales the maximum number of each kind (0 draws none).
    """
    size = canvas.shape[0]

    def count(most: int) -> int:
        return int(rng.integers(0, int(round(most * amount)) + 1))

    for _ in range(count(7)):
        p, q = rng.integers(0, size, (2, 2))
        colour = rng.uniform(0, 255, 3).tolist()
        cv2.line(canvas, p.tolist(), q.tolist(), colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(count(3)):
        steps = rng.normal(0.0, size / 8, (int(rng.integers(3, 7)), 2))
        curve = (rng.uniform(0, size, 2) + np.cumsum(steps, axis=0)).astype(np.int32)
        colour = rng.uniform(0, 255, 3).tolist()
        cv2.polylines(canvas, [curve], False, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(count(4)):
        # Stars of 5..8 spikes: blob-like, yet never mistakable for one of the shapes.
        n = 2 * int(rng.integers(5, 9))
        t = np.linspace(0.0, 2 * np.pi, n, endpoint=False) + rng.uniform(0.0, np.pi)
        spikes = np.where(np.arange(n) % 2 == 0, rng.uniform(0.9, 1.0, n), rng.uniform(0.3, 0.5, n))
        radius = rng.uniform(4.0, 20.0) * spikes
        centre = rng.uniform(0, size, 2)
        blob = centre + radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
        cv2.fillPoly(canvas, [blob.astype(np.int32)], rng.uniform(0, 255, 3).tolist())


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour (3,) at least MIN_CONTRAST from `background` (3,) when one is drawn.

    Of 8 random candidates the first far enough wins, else the farthest.
    """
    candidates = rng.uniform(0.0, 255.0, (8, 3)).astype(np.float32)
    distance = np.linalg.norm(candidates - background, axis=1)
    far = np.flatnonzero(distance >= MIN_CONTRAST)
    return candidates[far[0] if len(far) else np.argmax(distance)]


if __name__ == "__main__":
    from detector.cli.data import main

    sys.exit(main(["synthesize", *sys.argv[1:]]))
