"""Image decoding, bbox-aware training augmentation (albumentations) and the resize.

Geometry: images are resized to (size, size) without letterboxing, as YOLOv2 does, so a
box maps to the network input by x * size / width, y * size / height, and back by the
inverse. Boxes are xyxy in pixels throughout (albumentations' "pascal_voc" format).
"""

import os
import random

import cv2
import numpy as np

# albumentations asks PyPI for a newer version at import (a network call and a warning);
# a trainer should do neither, so opt out unless the user set the variable themselves.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A

from detector.data.records import Record

FILL = 114  # grey for the area an affine shift uncovers (the value Ultralytics uses)
MIN_BOX_SIDE = 1.0  # pixels of the resized image; thinner boxes are dropped


def read_image(path: str) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB; ValueError naming `path` if unreadable."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot read image (missing, unreadable or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def build_augmenter(
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.75, 1.25),
    translate: float = 0.2,
    hue: float = 0.015,
    saturation: float = 0.7,
    value: float = 0.4,
    min_visibility: float = 0.3,
) -> A.Compose:
    """The training augmentation: flip, scale/translate jitter, HSV-like colour jitter.

    Boxes go in and come out xyxy in pixels with a `classes` label field; boxes are clipped
    to the image and dropped when less than `min_visibility` of their area stays inside.

    Args:
        hflip: float. Probability of a horizontal flip. Defaults to 0.5.
        scale: (min, max). Zoom factor, one per image for both axes so shapes keep their
            aspect ratio (a stretched circle would look like an ellipse). Defaults to
            (0.75, 1.25).
        translate: float. Shift up to this fraction of the width / height, per axis.
            Defaults to 0.2. Uncovered pixels are grey (`FILL`).
        hue: float. Hue shift up to +-`hue` of the full colour circle (darknet's `hue=.1`
            is 0.1 here). Defaults to 0.015 (Ultralytics' hsv_h).
        saturation: float. Saturation gain in [1 - s, 1 + s] (darknet's `saturation=1.5`,
            a gain in [1/1.5, 1.5], is about 0.5 here). Defaults to 0.7 (Ultralytics' hsv_s).
        value: float. Brightness gain in [1 - v, 1 + v] (darknet's `exposure`). Defaults to
            0.4 (Ultralytics' hsv_v).
        min_visibility: float. Fraction of a box's area that must stay in the image.
            Defaults to 0.3.
    """
    return A.Compose(
        [
            A.HorizontalFlip(p=hflip),
            A.Affine(
                scale=tuple(scale),
                translate_percent=(-translate, translate),
                keep_ratio=True,
                border_mode=cv2.BORDER_CONSTANT,
                fill=FILL,
                p=1.0,
            ),
            A.ColorJitter(
                brightness=(1.0 - value, 1.0 + value),
                contrast=(1.0, 1.0),
                saturation=(1.0 - saturation, 1.0 + saturation),
                hue=(-hue, hue),
                p=1.0,
            ),
        ],
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["classes"],
            min_visibility=min_visibility,
            clip=True,
        ),
    )


def resize(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize to (size, size) without keeping the aspect ratio, boxes along.

    Args:
        image: uint8 (H, W, 3).
        boxes: (N, 4) xyxy in pixels of `image`.
        size: int. Output side, pixels.

    Returns:
        image uint8 (size, size, 3); boxes float32 (N, 4) xyxy in pixels of the output.
    """
    height, width = image.shape[:2]
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    gain = np.array([size / width, size / height] * 2, np.float32)
    return resized, np.asarray(boxes, np.float32).reshape(-1, 4) * gain


def prepare_example(
    record: Record,
    size: int,
    augmenter: A.Compose | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training (or plain, when `augmenter` is None) example: read, augment, resize.

    The augmenter draws its randomness from `rng`, so a seeded `rng` gives a reproducible
    example. Sharing one augmenter between threads is safe, but then which thread's `rng`
    an example uses is not defined.

    Returns:
        image uint8 (size, size, 3) RGB; boxes float32 (N, 4) xyxy in pixels of the resized
        image, each side >= MIN_BOX_SIDE; classes int32 (N,).
    """
    image = read_image(record.path)
    if image.shape[:2] != (record.height, record.width):
        raise ValueError(
            f"{record.path}: image is {image.shape[0]}x{image.shape[1]} pixels but its "
            f"annotations say {record.height}x{record.width}"
        )
    boxes, classes = record.boxes, record.classes
    if augmenter is not None:
        augmenter.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        out = augmenter(image=image, bboxes=boxes, classes=classes)
        image, boxes, classes = out["image"], out["bboxes"], out["classes"]
    image, boxes = resize(image, boxes, size)
    boxes = np.clip(boxes, 0.0, size)  # float rounding of the resize gain may overshoot
    classes = np.asarray(classes, np.int32).reshape(-1)
    keep = np.all(boxes[:, 2:] - boxes[:, :2] >= MIN_BOX_SIDE, axis=1)
    return image, boxes[keep], classes[keep]
