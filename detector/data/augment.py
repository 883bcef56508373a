"""Training augmentation and the resize to the network input, as one affine warp.

Geometry: by default images are resized to (size, size) without keeping the aspect
ratio, as YOLOv2 does; with ``letterbox`` both axes scale by size / max(width, height) and
the rest is padded grey, centred (`detector.utils.boxes.letterbox_geometry`, whose
`to_image_pixels` maps predictions back). Boxes are xyxy in pixels throughout.

The augmentation (flip, zoom and shift about the output's centre, darknet's HSV jitter)
is composed with the resize into one 2x3 matrix applied by a single ``cv2.warpAffine`` at
the output size, so its cost does not grow with the source image (OpenCV releases the GIL
inside each call). This replaced albumentations' Compose run at the source resolution
(2026-11, the GIL-free pipeline): zoom and shift mean what they meant (one zoom for both
axes about the centre, shifts as fractions of the image), the draws come from the
example's numpy Generator in a fixed order (`Augmenter.draw`), so an example is still a
function of its Generator's seed, but the pixels and boxes for a given seed differ from
the albumentations ones (other draws, one interpolation instead of two). Albumentations
came back as the users' own stage after all of this (``data.albumentations``,
`detector.data.albu`), run by `Augmenter.finish` on the finished example.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from detector.data.files import read_image
from detector.data.records import Record
from detector.utils.boxes import letterbox_geometry, to_input_pixels

FILL = 114  # grey for the area an affine shift uncovers (the value Ultralytics uses)
MIN_BOX_SIDE = 1.0  # pixels of the resized image; thinner boxes are dropped


@dataclass(frozen=True)
class Draw:
    """One example's augmentation.

    Attributes:
        flip: bool. Mirror left-right. zoom: float. Scale about the output's centre.
        shift: (dx, dy). Shift, fractions of the output side.
        hsv: (hue shift, saturation gain, exposure gain) or None (no colour change).
    """

    flip: bool
    zoom: float
    shift: tuple[float, float]
    hsv: tuple[float, float, float] | None


@dataclass(frozen=True)
class Augmenter:
    """The training augmentation's parameters (`build_augmenter`). Immutable: one instance
    serves every loading thread, the randomness is the caller's Generator."""

    hflip: float
    scale: tuple[float, float]
    translate: float
    hue: float
    saturation: float
    exposure: float
    min_visibility: float
    stage: Callable | None = None

    @property
    def max_zoom(self) -> float:
        """The largest zoom factor it draws."""
        return float(max(self.scale))

    def draw(self, rng: np.random.Generator) -> Draw:
        """The next example's parameters from `rng` (always the same 8 draws, in order)."""
        flip = bool(rng.random() < self.hflip)
        zoom = float(rng.uniform(self.scale[0], self.scale[1]))
        dx, dy = rng.uniform(-self.translate, self.translate, 2)
        dhue = float(rng.uniform(-self.hue, self.hue))
        gains = rng.uniform(1.0, [self.saturation, self.exposure])
        invert = rng.random(2) < 0.5
        dsat, dexp = np.where(invert, 1.0 / gains, gains).tolist()
        hsv = None if dhue == 0.0 and dsat == 1.0 and dexp == 1.0 else (dhue, dsat, dexp)
        return Draw(flip, zoom, (float(dx), float(dy)), hsv)

    def finish(
        self, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A finished example (image uint8 (S, S, 3), boxes (N, 4) xyxy pixels, classes
        (N,)) through the user's albumentations `stage`, drawing from `rng` after every
        other draw of the example; unchanged (and no draw) without a stage."""
        if self.stage is None:
            return image, boxes, classes
        return self.stage(image, boxes, classes, rng)


def build_augmenter(
    *,
    hflip: float,
    scale: tuple[float, float],
    translate: float,
    hue: float,
    saturation: float,
    exposure: float,
    min_visibility: float,
    stage: Callable | None = None,
) -> Augmenter:
    """The training augmentation: flip, scale/translate jitter, HSV colour jitter.

    The colour parameters mean what darknet's ``[net]`` options of the same name mean.
    Boxes are clipped to the image and dropped when less than `min_visibility` of their
    area stays inside (and when thinner than `MIN_BOX_SIDE` output pixels). Every argument
    is required: the defaults are the config's (`detector.config.schema.DataConfig`).

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
        stage: callable or None. The user's albumentations stage
            (`detector.data.albu.AlbumentationsStage`), run by `Augmenter.finish` on the
            finished example. Defaults to None (none).
    """
    low, high = scale
    return Augmenter(
        hflip,
        (float(low), float(high)),
        translate,
        hue,
        saturation,
        exposure,
        min_visibility,
        stage,
    )


def hsv_jitter(
    image: np.ndarray, dhue: float, dsat: float, dexp: float, bgr: bool = False
) -> np.ndarray:
    """darknet's colour jitter (``random_distort_image``) with lookup tables: hue shifted
    by `dhue` of the colour circle, saturation and value times `dsat`, `dexp`.

    `image` is uint8 (H, W, 3) RGB, or BGR with `bgr` (a fourth channel, alpha, is
    ignored); the result is (H, W, 3) RGB either way (the same pixels: the HSV
    conversion reads the channels by name)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV if bgr else cv2.COLOR_RGB2HSV)  # H: 0..179
    x = np.arange(256, dtype=np.float32)
    tables = (
        np.mod(x + dhue * 180.0, 180.0).astype(np.uint8),
        np.clip(x * dsat, 0, 255).astype(np.uint8),
        np.clip(x * dexp, 0, 255).astype(np.uint8),
    )
    # one single-channel LUT per plane: OpenCV's 3-channel-table LUT is not vectorised
    planes = [cv2.LUT(plane, table) for plane, table in zip(cv2.split(hsv), tables, strict=True)]
    return cv2.cvtColor(cv2.merge(planes), cv2.COLOR_HSV2RGB)


def resize_matrix(height: int, width: int, size: int, letterbox: bool = False) -> np.ndarray:
    """(3, 3) map from image pixels (edge coordinates) to the resized (size, size) input."""
    gx, gy, px, py = letterbox_geometry(height, width, size, letterbox)
    return np.array([[gx, 0.0, px], [0.0, gy, py], [0.0, 0.0, 1.0]])


def draw_matrix(draw: Draw, size: int) -> np.ndarray:
    """(3, 3) map of `draw`'s flip, zoom about the centre and shift, in output pixels."""
    c = size / 2.0
    a = -draw.zoom if draw.flip else draw.zoom
    dx, dy = draw.shift
    return np.array(
        [
            [a, 0.0, c - a * c + dx * size],
            [0.0, draw.zoom, c - draw.zoom * c + dy * size],
            [0, 0, 1],
        ]
    )


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """`image` through the edge-coordinate, axis-aligned `matrix` into a (size, size)
    uint8 image; output pixels whose centre falls outside the mapped image are `FILL`."""
    # pixel centres sit at +0.5 in edge coordinates; warpAffine maps centres
    m = matrix.copy()
    m[:2, 2] += m[:2, :2].sum(axis=1) * 0.5 - 0.5
    # replicated edges: the image's own edge pixels do not blend with FILL (as cv2.resize)
    out = cv2.warpAffine(
        image, m[:2], (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    height, width = image.shape[:2]
    # the output columns / rows the image covers (Python floats: the same float64 results
    # as numpy's, without a dozen small-array calls per example)
    (gx, _, px), (_, gy, py) = matrix[:2].tolist()
    ends = (*sorted((gx * 0.0 + px, gx * width + px)), *sorted((gy * 0.0 + py, gy * height + py)))
    x0, x1, y0, y1 = (min(max(math.ceil(v - 0.5), 0), size) for v in ends)
    out[:y0], out[y1:], out[:, :x0], out[:, x1:] = FILL, FILL, FILL, FILL
    return out


def transform_boxes(
    boxes: np.ndarray, matrix: np.ndarray, size: int, min_visibility: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) xyxy through the axis-aligned `matrix`, clipped to (size, size).

    Returns:
        boxes float32 (N, 4) clipped; keep bool (N,): at least `min_visibility` of the
        mapped box's area inside and each side >= `MIN_BOX_SIDE`.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x = boxes[:, [0, 2]] * matrix[0, 0] + matrix[0, 2]
    y = boxes[:, [1, 3]] * matrix[1, 1] + matrix[1, 2]
    mapped = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], axis=1)
    clipped = np.clip(mapped, 0.0, size)
    area = np.prod(mapped[:, 2:] - mapped[:, :2], axis=1)
    inside = np.prod(clipped[:, 2:] - clipped[:, :2], axis=1)
    keep = (inside >= min_visibility * area) & np.all(
        clipped[:, 2:] - clipped[:, :2] >= MIN_BOX_SIDE, axis=1
    )
    return clipped.astype(np.float32), keep


def render(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    base: np.ndarray,
    size: int,
    augmenter: Augmenter | None,
    rng: np.random.Generator,
    bgr: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`image` and its boxes through `base` (image -> output pixels) and a drawn
    augmentation into a (size, size) RGB training example (see `prepare_example`;
    `bgr`: `image` is BGR, converted at the output size, within the colour jitter)."""
    draw = augmenter.draw(rng) if augmenter is not None else None
    matrix = base if draw is None else draw_matrix(draw, size) @ base
    # OpenCV's warpAffine is vectorised for 4 channels, not 3: warping the image with an
    # alpha channel appended takes half the time, and its first three channels are the
    # 3-channel warp's exactly (each channel is interpolated alone, same weights).
    image = warp(cv2.cvtColor(image, cv2.COLOR_BGR2BGRA), matrix, size)
    if draw is not None and draw.hsv is not None:
        image = hsv_jitter(image, *draw.hsv, bgr=bgr)  # reads the first three channels
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    visibility = augmenter.min_visibility if augmenter is not None else 0.0
    boxes, keep = transform_boxes(boxes, matrix, size, visibility)
    return image, boxes[keep], np.asarray(classes, np.int32).reshape(-1)[keep]


def resize(
    image: np.ndarray, boxes: np.ndarray, size: int, letterbox: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to (size, size), plainly or letterboxed, boxes along (evaluation's resize).

    Args:
        image: uint8 (H, W, 3).
        boxes: (N, 4) xyxy in pixels of `image`.
        size: int. Output side, pixels.
        letterbox: bool. Keep the aspect ratio and pad with `FILL`. Defaults to False.

    Returns:
        image uint8 (size, size, 3); boxes float32 (N, 4) xyxy in pixels of the output
        (`detector.utils.boxes.to_input_pixels`).
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


def record_boxes(record: Record, image: np.ndarray) -> np.ndarray:
    """The record's boxes (N, 4) xyxy in pixels of `image`, which may be a reduced decode
    or differ from the annotated size (counted by the image check)."""
    boxes = record.boxes
    if image.shape[:2] != (record.height, record.width):
        gain = np.array([image.shape[1] / record.width, image.shape[0] / record.height] * 2)
        boxes = (boxes * gain).astype(np.float32)
    return boxes


def prepare_example(
    record: Record,
    size: int,
    augmenter: Augmenter | None,
    rng: np.random.Generator,
    letterbox: bool = False,
    image: np.ndarray | None = None,
    bgr: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training (or plain, when `augmenter` is None) example: read, augment, resize.

    `image`: the record's decoded image when the caller has it already (a cache or a
    reduced decode: boxes follow its real size); it is not modified. `bgr`: `image` is
    in OpenCV's BGR order (the example is RGB all the same: converting the smaller
    output saves a pass over the source). The augmentation draws from `rng`, so a
    seeded `rng` gives a reproducible example.

    Returns:
        image uint8 (size, size, 3) RGB; boxes float32 (N, 4) xyxy in pixels of the resized
        image, each side >= MIN_BOX_SIDE; classes int32 (N,).
    """
    image = read_image(record.path) if image is None else image
    boxes = record_boxes(record, image)
    if augmenter is None:  # evaluation's resize, exactly
        image, boxes = resize(image, boxes, size, letterbox)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image
        boxes, keep = transform_boxes(boxes, np.eye(3), size)
        return image, boxes[keep], np.asarray(record.classes, np.int32).reshape(-1)[keep]
    base = resize_matrix(*image.shape[:2], size, letterbox)
    return render(image, boxes, record.classes, base, size, augmenter, rng, bgr)
