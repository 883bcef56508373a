"""Bbox-aware training augmentation (albumentations) and the resize to the network input.

Geometry: by default images are resized to (size, size) without keeping the aspect
ratio, as YOLOv2 does; with ``letterbox`` both axes scale by size / max(width, height) and
the rest is padded grey, centred (`detector.boxes.letterbox_geometry`, whose
`to_image_pixels` maps predictions back). Boxes are xyxy in pixels throughout
(albumentations' "pascal_voc" format).
"""

import random

import albumentations as A
import cv2
import numpy as np

from detector.boxes import letterbox_geometry, to_input_pixels
from detector.data.files import read_image
from detector.data.records import Record

FILL = 114  # grey for the area an affine shift uncovers (the value Ultralytics uses)
MIN_BOX_SIDE = 1.0  # pixels of the resized image; thinner boxes are dropped


class DarknetHSV(A.ImageOnlyTransform):
    """darknet's colour jitter (``random_distort_image``) on uint8 RGB, with lookup tables.

    Hue is shifted by a uniform draw in [-hue, hue] of the colour circle; saturation and
    value (darknet's "exposure") are multiplied by darknet's ``rand_scale(s)``: a uniform
    draw in [1, s], inverted with probability 1/2.
    """

    def __init__(
        self, hue: float = 0.1, saturation: float = 1.5, exposure: float = 1.5, p: float = 1.0
    ):
        super().__init__(p=p)
        self.hue, self.saturation, self.exposure = hue, saturation, exposure

    def _scale(self, s: float) -> float:
        scale = self.py_random.uniform(1.0, s)
        return scale if self.py_random.random() < 0.5 else 1.0 / scale

    def get_params(self) -> dict:
        return {
            "dhue": self.py_random.uniform(-self.hue, self.hue),
            "dsat": self._scale(self.saturation),
            "dexp": self._scale(self.exposure),
        }

    def apply(self, img: np.ndarray, dhue: float, dsat: float, dexp: float, **params):
        if dhue == 0.0 and dsat == 1.0 and dexp == 1.0:
            return img  # the HSV round trip itself would round some values
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # OpenCV: H in 0..179
        x = np.arange(256, dtype=np.float32)
        luts = (
            np.mod(x + dhue * 180.0, 180.0).astype(np.uint8),
            np.clip(x * dsat, 0, 255).astype(np.uint8),
            np.clip(x * dexp, 0, 255).astype(np.uint8),
        )
        channels = [cv2.LUT(c, lut) for c, lut in zip(cv2.split(hsv), luts, strict=True)]
        return cv2.cvtColor(cv2.merge(channels), cv2.COLOR_HSV2RGB)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("hue", "saturation", "exposure")


def build_augmenter(
    *,
    hflip: float,
    scale: tuple[float, float],
    translate: float,
    hue: float,
    saturation: float,
    exposure: float,
    min_visibility: float,
) -> A.Compose:
    """The training augmentation: flip, scale/translate jitter, HSV colour jitter.

    The colour parameters mean what darknet's ``[net]`` options of the same name mean.
    Boxes go in and come out xyxy in pixels with a `classes` label field; boxes are
    clipped to the image and dropped when less than `min_visibility` of their area stays
    inside (and, after the resize, when thinner than `MIN_BOX_SIDE`). Every argument is
    required: the defaults are the config's (`detector.config.DataConfig`).

    Args:
        hflip: float. Probability of a horizontal flip.
        scale: (min, max). Zoom factor, one per image for both axes so shapes keep their
            aspect ratio.
        translate: float. Shift up to this fraction of the width / height, per axis.
            Uncovered pixels are grey (`FILL`). With `scale`, this is darknet's ``jitter``.
        hue: float. Hue shift up to +-`hue` of the colour circle (darknet ``hue``).
        saturation: float >= 1. Saturation gain in [1/s, s] (darknet ``saturation``).
        exposure: float >= 1. Brightness gain in [1/e, e] (darknet ``exposure``).
        min_visibility: float. Fraction of a box's area that must stay in the image.
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
            DarknetHSV(hue, saturation, exposure),
        ],
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["classes"],
            min_visibility=min_visibility,
            clip=True,
        ),
    )


def resize(
    image: np.ndarray, boxes: np.ndarray, size: int, letterbox: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to (size, size), plainly or letterboxed, boxes along.

    Args:
        image: uint8 (H, W, 3).
        boxes: (N, 4) xyxy in pixels of `image`.
        size: int. Output side, pixels.
        letterbox: bool. Keep the aspect ratio and pad with `FILL`. Defaults to False.

    Returns:
        image uint8 (size, size, 3); boxes float32 (N, 4) xyxy in pixels of the output
        (`detector.boxes.to_input_pixels`).
    """
    height, width = image.shape[:2]
    if letterbox:
        gx, gy, px, py = letterbox_geometry(height, width, size, letterbox)
        new_w, new_h = round(width * gx), round(height * gy)
        resized = np.full((size, size, 3), FILL, np.uint8)
        resized[py : py + new_h, px : px + new_w] = cv2.resize(
            image, (new_w, new_h), interpolation=cv2.INTER_LINEAR
        )
    else:
        resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return resized, to_input_pixels(boxes, height, width, size, letterbox)


def prepare_example(
    record: Record,
    size: int,
    augmenter: A.Compose | None,
    rng: np.random.Generator,
    letterbox: bool = False,
    image: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training (or plain, when `augmenter` is None) example: read, augment, resize.

    `image`: the record's decoded image when the caller has it already (a cache); it is
    not modified.

    The augmenter draws its randomness from `rng`, so a seeded `rng` gives a reproducible
    example. Sharing one augmenter between threads is safe, but then which thread's `rng`
    an example uses is not defined.

    Returns:
        image uint8 (size, size, 3) RGB; boxes float32 (N, 4) xyxy in pixels of the resized
        image, each side >= MIN_BOX_SIDE; classes int32 (N,).
    """
    image = read_image(record.path) if image is None else image
    boxes, classes = record.boxes, record.classes
    if image.shape[:2] != (record.height, record.width):  # counted by the image check
        gain = np.array([image.shape[1] / record.width, image.shape[0] / record.height] * 2)
        boxes = (boxes * gain).astype(np.float32)
    if augmenter is not None:
        augmenter.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        out = augmenter(image=image, bboxes=boxes, classes=classes)
        image, boxes, classes = out["image"], out["bboxes"], out["classes"]
    image, boxes = resize(image, boxes, size, letterbox)
    boxes = np.clip(boxes, 0.0, size)  # float rounding of the resize gain may overshoot
    classes = np.asarray(classes, np.int32).reshape(-1)
    keep = np.all(boxes[:, 2:] - boxes[:, :2] >= MIN_BOX_SIDE, axis=1)
    return image, boxes[keep], classes[keep]
