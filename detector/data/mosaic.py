"""Training examples of a record list: one image, or a mosaic of four, optionally mixed up.

`ExampleMaker` is what the training pipeline's loading threads (and the ``augmented.png``
plot) call. Each image is read once at a reduced size: JPEG's DCT scaling decodes at 1/2,
1/4 or 1/8 of the size for a fraction of the cost, then an area resize brings it to about
the largest side training uses (`work_side`); every later step costs per output pixel.

Mosaic (darknet / Ultralytics style): four images, each resized so its longer side is the
output side S, are placed on a (2S, 2S) grey canvas around a centre drawn in
[S/2, 3S/2), one per quadrant with a corner on the centre; their boxes are clipped to the
part of their image that is on the canvas. The central (S, S) window of the canvas then
goes through the usual flip / zoom / shift / colour augmentation. Mixup blends the
example with a second one made the same way, by a beta(32, 32) ratio, and keeps the boxes
of both. Every random choice (the other records included) comes from the Generator the
caller passes: in training, the one of (seed, stream position).

`MosaicSwitch` ends mosaic and mixup for the last part of a run (``train.close_mosaic``),
closed by the training loop's ``CloseMosaic`` (`detector.engine.callbacks.mosaic`).
"""

import sys
import threading

import cv2
import numpy as np

from detector.data.augment import FILL, Augmenter, prepare_example, record_boxes, render
from detector.data.files import decode_reduced
from detector.data.records import Record

MAX_UNREADABLE_RUN = 32  # unreadable records in a row that end a run (see `load`)
MIXUP_BETA = 32.0  # Ultralytics' beta(32, 32): mostly near-even blends


def reduce_factor(height: int, width: int, work_side: int, letterbox: bool) -> int:
    """The largest of 1, 2, 4, 8 that keeps the side the resize reads (the shorter one,
    or the longer with `letterbox`) at least `work_side` pixels (1 if `work_side` <= 0)."""
    if work_side <= 0:
        return 1
    side = max(height, width) if letterbox else min(height, width)
    for factor in (8, 4, 2):
        if side >= factor * work_side:
            return factor
    return 1


def shrink(image: np.ndarray, work_side: int, letterbox: bool) -> np.ndarray:
    """`image` area-resized so the side the resize reads is `work_side`, when that saves
    more than a fifth of it; else (or if `work_side` <= 0) `image` itself."""
    if work_side <= 0:
        return image
    height, width = image.shape[:2]
    side = max(height, width) if letterbox else min(height, width)
    gain = work_side / side
    if gain >= 0.8:
        return image
    size = (max(1, round(width * gain)), max(1, round(height * gain)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class ExampleMaker:
    """Training examples (image uint8 (S, S, 3), boxes (N, 4) xyxy pixels, classes (N,))
    of a record list; thread-safe (its only state is the image cache and the warnings).

    An unreadable image (deleted or damaged while training) is replaced by the next
    readable record in list order, deterministically; each such file is named once on
    stderr and counted in `unreadable`.

    Args:
        records: Records. Not packed: images are read at their paths.
        augmenter: Augmenter or None. None: plain resize.
        letterbox: bool. Keep the aspect ratio and pad.
        work_side: int. Largest side training reads: max input size x max zoom, pixels.
        mosaic: float. Probability of a mosaic example. Defaults to 0.
        mixup: float. Probability of a mixup. Defaults to 0.
        cache: bool. Keep the (reduced) decoded images in memory. Defaults to False.
    """

    def __init__(
        self,
        records,
        augmenter: Augmenter | None,
        letterbox: bool,
        work_side: int,
        mosaic: float = 0.0,
        mixup: float = 0.0,
        cache: bool = False,
    ):
        self.records, self.augmenter, self.letterbox = records, augmenter, letterbox
        self.work_side, self.mosaic_p, self.mixup_p = int(work_side), mosaic, mixup
        self.cache = {} if cache else None
        self.unreadable: dict[str, int] = {}
        self.lock = threading.Lock()

    def read(self, index: int) -> np.ndarray | None:
        """Record `index`'s image at the work size, BGR (converted to RGB with the colour
        jitter, at the output size), cached; None if unreadable."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        record = self.records[index]
        factor = reduce_factor(record.height, record.width, self.work_side, self.letterbox)
        try:
            with open(record.path, "rb") as f:
                data = f.read()
            image = shrink(
                decode_reduced(data, record.path, factor, bgr=True), self.work_side, self.letterbox
            )
        except (OSError, ValueError):
            self._unreadable(record.path)
            return None
        if self.cache is not None:
            self.cache[index] = image
        return image

    def _unreadable(self, path: str) -> None:
        with self.lock:
            first = path not in self.unreadable
            self.unreadable[path] = self.unreadable.get(path, 0) + 1
        if first:
            print(
                f"warning: {path}: cannot read image while training (deleted, damaged or not "
                "an image); the next readable record is used in its place",
                file=sys.stderr,
            )

    def load(self, index: int) -> tuple[Record, np.ndarray]:
        """(record, image BGR) of `index`, or of the next readable record after it.

        Raises:
            ValueError: `MAX_UNREADABLE_RUN` records in a row (or all) are unreadable: the
            data went away (a mount dropped, a folder deleted); training on blanks would
            silently ruin the run.
        """
        n = len(self.records)
        for k in range(min(n, MAX_UNREADABLE_RUN)):
            image = self.read((index + k) % n)
            if image is not None:
                return self.records[(index + k) % n], image
        raise ValueError(
            f"data: {min(n, MAX_UNREADABLE_RUN)} training images in a row cannot be read, "
            f"from {self.records[index].path}: the dataset is no longer available "
            "(unmounted, moved or deleted?)"
        )

    def make(self, index: int, size: int, rng: np.random.Generator, several: bool = True):
        """The example of record `index` at output side `size`: mosaic with probability
        `mosaic`, then mixup with probability `mixup`, then the augmenter's albumentations
        stage (`Augmenter.finish`). Without `several` (mosaic closed),
        or with both 0, one image and no extra draw from `rng`."""
        image, boxes, classes = self.base(index, size, rng, several)
        if several and self.mixup_p > 0 and rng.random() < self.mixup_p:
            other_rng = np.random.default_rng(rng.integers(2**63))
            other = self.base(int(other_rng.integers(len(self.records))), size, other_rng)
            ratio = float(rng.beta(MIXUP_BETA, MIXUP_BETA))
            image = cv2.addWeighted(image, ratio, other[0], 1.0 - ratio, 0.0)
            boxes = np.concatenate([boxes, other[1]])
            classes = np.concatenate([classes, other[2]])
        if self.augmenter is not None:  # the user's albumentations stage, last
            image, boxes, classes = self.augmenter.finish(image, boxes, classes, rng)
        return image, boxes, classes

    def base(self, index: int, size: int, rng: np.random.Generator, several: bool = True):
        """One image or (with probability `mosaic`, if `several`) a mosaic, augmented."""
        if several and self.mosaic_p > 0 and rng.random() < self.mosaic_p:
            return self.mosaic(index, size, rng)
        record, image = self.load(index)
        return prepare_example(record, size, self.augmenter, rng, self.letterbox, image, True)

    def mosaic(self, index: int, size: int, rng: np.random.Generator):
        """Records `index` and three drawn from `rng` in the four quadrants, augmented."""
        indices = [index, *rng.integers(0, len(self.records), 3).tolist()]
        tiles = [self.load(i) for i in indices]
        visibility = self.augmenter.min_visibility if self.augmenter is not None else 0.0
        canvas, boxes, classes = mosaic_canvas(tiles, size, rng, visibility)
        crop = np.array([[1.0, 0.0, -size / 2], [0.0, 1.0, -size / 2], [0.0, 0.0, 1.0]])
        return render(canvas, boxes, classes, crop, size, self.augmenter, rng, bgr=True)


def mosaic_canvas(tiles: list, size: int, rng: np.random.Generator, min_visibility=0.0):
    """Four (record, image) tiles on a (2S, 2S) canvas around a drawn centre.

    Tile k goes top-left, top-right, bottom-left, bottom-right of the centre, its longer
    side resized to `size`. Returns canvas uint8 (2S, 2S, 3), boxes float32 (N, 4) xyxy
    canvas pixels clipped to their tile's visible part (those with less than
    `min_visibility` of their area there dropped), classes int32 (N,).
    """
    side = 2 * size
    canvas = np.full((side, side, 3), FILL, np.uint8)
    xc, yc = (int(v) for v in rng.integers(size // 2, size * 3 // 2, 2))
    all_boxes, all_classes = [], []
    for k, (record, image) in enumerate(tiles):
        boxes = record_boxes(record, image)
        height, width = image.shape[:2]
        gain = size / max(height, width)
        w, h = max(1, round(width * gain)), max(1, round(height * gain))
        image = cv2.resize(
            image, (w, h), interpolation=cv2.INTER_AREA if gain < 1 else cv2.INTER_LINEAR
        )
        x0 = xc - w if k in (0, 2) else xc
        y0 = yc - h if k in (0, 1) else yc
        a = np.array([max(x0, 0), max(y0, 0), min(x0 + w, side), min(y0 + h, side)])
        canvas[a[1] : a[3], a[0] : a[2]] = image[a[1] - y0 : a[3] - y0, a[0] - x0 : a[2] - x0]
        placed = np.asarray(boxes, np.float64).reshape(-1, 4) * ([w / width, h / height] * 2)
        placed += [x0, y0, x0, y0]
        clipped = np.clip(placed, a[[0, 1, 0, 1]], a[[2, 3, 2, 3]])
        area = np.prod(placed[:, 2:] - placed[:, :2], axis=1)
        inside = np.prod(clipped[:, 2:] - clipped[:, :2], axis=1)
        keep = (inside > 0) & (inside >= min_visibility * area)
        all_boxes.append(clipped[keep])
        all_classes.append(np.asarray(record.classes, np.int32).reshape(-1)[keep])
    return canvas, np.concatenate(all_boxes).astype(np.float32), np.concatenate(all_classes)


class MosaicSwitch:
    """Whether mosaic and mixup are closed: set by the training loop (`CloseMosaic`), read
    by the loading threads (a ``threading.Event``: safe across threads)."""

    def __init__(self):
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()
