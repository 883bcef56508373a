"""One image's detections (`Result`) and what they become: COCO results, a drawn image.

Units: boxes are xyxy in *image pixels* of the original image as displayed (EXIF
orientation applied), continuous coordinates as in COCO; COCO results carry xywh.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from detector.data.files import read_image
from detector.utils.boxes import letterbox_geometry, xyxy_to_xywh

# Box colours by class index (the 20-colour palette Ultralytics draws with), RGB.
PALETTE = tuple(
    tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))
    for h in (
        "FF3838 FF9D97 FF701F FFB21D CFD231 48F90A 92CC17 3DDB86 1A9334 00D4BB "
        "2C99A8 00C2FF 344593 6473FF 0018EC 8438FF 520085 CB38FF FF95C8 FF37C7"
    ).split()
)


def coco_results(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    image_id: int,
    category_ids: Sequence[int],
) -> list[dict]:
    """One image's detections as COCO results: ``{"image_id", "category_id" (the
    dataset's own id of the class), "bbox" (xywh, image pixels, rounded to 0.001),
    "score" (rounded to 1e-5)}``.

    Args:
        boxes: (N, 4) xyxy, image pixels. scores: (N,). class_ids: (N,) class indices.
        image_id: int. The image's id in the ground truth.
        category_ids: sequence of int. Class index -> category id.
    """
    xywh = np.round(xyxy_to_xywh(boxes), 3).tolist()
    categories = np.asarray(category_ids, np.int64)[np.asarray(class_ids, np.int64)].tolist()
    rounded = np.round(np.asarray(scores).astype(np.float64), 5).tolist()
    return [
        {"image_id": int(image_id), "category_id": c, "bbox": b, "score": s}
        for b, c, s in zip(xywh, categories, rounded, strict=True)
    ]


@dataclass
class CocoDetections:
    """The detections of a batch of images as COCO results, one row per detection, in
    image order then decreasing score (what `coco_results` gives image after image).

    Attributes:
        image_ids: int64 (N,). bbox: float64 (N, 4) xywh, image pixels, rounded to 0.001.
        scores: float64 (N,) rounded to 1e-5. category_ids: int64 (N,) the dataset's ids.
    """

    image_ids: np.ndarray
    bbox: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def concat(cls, parts: Sequence["CocoDetections"]) -> "CocoDetections":
        """The rows of `parts` (at least one), in order."""
        fields = ("image_ids", "bbox", "scores", "category_ids")
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    def to_results(self) -> list[dict]:
        """The COCO results list (the dicts `coco_results` makes)."""
        rows = zip(
            self.image_ids.tolist(),
            self.category_ids.tolist(),
            self.bbox.tolist(),
            self.scores.tolist(),
            strict=True,
        )
        return [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in rows]

    def to_annotations(self) -> list[dict]:
        """What pycocotools' ``COCO.loadRes`` makes of `to_results` for bbox results (ids
        from 1 in row order, area w·h, not crowd), without its polygon per box, which
        bbox evaluation never reads. Each bbox is a row view of `bbox` (pycocotools' IoU
        takes arrays): a dict holding no Python container is not tracked by the cyclic
        garbage collector, whose full passes over a TensorFlow process take ~0.2 s."""
        area = (self.bbox[:, 2] * self.bbox[:, 3]).tolist()
        rows = zip(
            self.image_ids.tolist(),
            self.category_ids.tolist(),
            list(self.bbox),
            self.scores.tolist(),
            area,
            strict=True,
        )
        return [
            {"image_id": i, "category_id": c, "bbox": b, "score": s, "area": a}
            | {"id": n, "iscrowd": 0}
            for n, (i, c, b, s, a) in enumerate(rows, 1)
        ]


def batch_coco_detections(
    outputs: tuple,
    shapes: np.ndarray,
    image_ids: np.ndarray,
    size: int,
    letterbox: bool,
    category_ids: Sequence[int],
) -> CocoDetections:
    """Padded NMS outputs of a batch -> its `CocoDetections`, in whole-array numpy
    operations (a loop per image for the geometry only). Gives exactly what
    ``predict.to_image_boxes`` then `coco_results` give image by image.

    Args:
        outputs: (boxes (B, K, 4) xyxy normalised to the input, scores (B, K), class
            indices (B, K), valid counts (B,)), numpy (``postprocess.nms``).
        shapes: int (B, 2). Each image's original (height, width), pixels.
        image_ids: int (B,). size: int. The input side, pixels. letterbox: bool.
        category_ids: sequence of int. Class index -> category id.
    """
    boxes, scores, classes, valid = outputs
    keep = np.arange(boxes.shape[1])[None, :] < np.asarray(valid)[:, None]  # (B, K)
    rows = np.nonzero(keep)[0]
    geometry = np.array(
        [letterbox_geometry(h, w, size, letterbox) for h, w in np.asarray(shapes).tolist()],
        np.float64,
    ).reshape(-1, 4)
    gains, pads = geometry[:, [0, 1, 0, 1]], geometry[:, [2, 3, 2, 3]]
    limits = np.asarray(shapes, np.float64)[:, [1, 0, 1, 0]]
    # The same float32 then float64 steps as to_image_boxes / to_image_pixels, row-wise.
    pixels = np.asarray(np.clip(boxes[keep], 0.0, 1.0) * size, np.float64)
    pixels = np.clip((pixels - pads[rows]) / gains[rows], 0.0, limits[rows])
    lookup = np.asarray(category_ids, np.int64)
    return CocoDetections(
        image_ids=np.asarray(image_ids, np.int64)[rows],
        bbox=np.round(xyxy_to_xywh(pixels), 3),
        scores=np.round(np.asarray(scores[keep]).astype(np.float64), 5),
        category_ids=lookup[np.asarray(classes[keep], np.int64)],
    )


def draw_boxes(
    image: np.ndarray, boxes: np.ndarray, labels: Sequence[str], class_ids: Sequence[int]
) -> np.ndarray:
    """A copy of `image` (uint8 (H, W, 3) RGB) with the boxes (N, 4) xyxy in its pixels
    drawn, one colour per class, each labelled on a filled band above it (inside the box
    when there is no room above)."""
    import cv2

    out = np.array(image, np.uint8, copy=True, order="C")
    line = max(1, round(sum(out.shape[:2]) / 600))
    font, scale, weight = cv2.FONT_HERSHEY_SIMPLEX, line / 3, max(line - 1, 1)
    for box, label, cls in zip(boxes, labels, class_ids, strict=True):
        colour = PALETTE[int(cls) % len(PALETTE)]
        x1, y1, x2, y2 = (int(v) for v in np.round(box))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, line, cv2.LINE_AA)
        (text_w, text_h), base = cv2.getTextSize(label, font, scale, weight)
        top = y1 - text_h - base if y1 - text_h - base >= 0 else y1
        cv2.rectangle(out, (x1, top), (x1 + text_w, top + text_h + base), colour, -1)
        white = (255, 255, 255)
        cv2.putText(out, label, (x1, top + text_h), font, scale, white, weight, cv2.LINE_AA)
    return out


@dataclass
class Result:
    """The detections of one image, in its original pixels.

    Attributes:
        boxes: float64 (N, 4). xyxy in pixels of the original image as displayed (EXIF
            orientation applied), clipped to it.
        scores: float32 (N,). Confidence, decreasing.
        class_ids: int32 (N,). Contiguous class indices.
        names: list of str. Class name of each detection.
        path: str or None. The image file; None for an image given as an array.
        orig_shape: (height, width). Of the original image, pixels.
        category_ids: list of int. The checkpoint's dataset id of each class (index =
            class id), what `to_coco` writes by default.
        time_ms: float. Preprocessing, forward and postprocessing of its batch per image,
            milliseconds.
        image: uint8 (H, W, 3) RGB or None. The image when it was given as an array (for
            `plot`); None for a file, which `plot` reads again.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    names: list[str]
    path: str | None
    orig_shape: tuple[int, int]
    category_ids: list[int] = field(default_factory=list, repr=False)
    time_ms: float = 0.0
    image: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(self, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict]:
        """The detections as COCO results of image `image_id` (see `coco_results`), with
        `category_ids` (class index -> id; defaults to the checkpoint's)."""
        ids = self.category_ids if category_ids is None else category_ids
        return coco_results(self.boxes, self.scores, self.class_ids, image_id, ids)

    def plot(self, image: np.ndarray | None = None) -> np.ndarray:
        """The image with the boxes and their labels (``name 0.87``) drawn: a new uint8
        (H, W, 3) RGB array.

        Args:
            image: uint8 (H, W, 3) RGB of `orig_shape`, or None: the array given to
                `predict`, else the image read again from `path`. Defaults to None.
        """
        if image is None and self.image is not None:
            image = self.image
        elif image is None and self.path:
            image = read_image(self.path)
        if image is None:
            raise ValueError("Result.plot: this result has no path; pass image=")
        if tuple(image.shape[:2]) != tuple(self.orig_shape):
            raise ValueError(
                f"Result.plot: image is {image.shape[:2]}, the detections are of an "
                f"image of {tuple(self.orig_shape)}"
            )
        labels = [f"{n} {s:.2f}" for n, s in zip(self.names, self.scores, strict=True)]
        return draw_boxes(image, self.boxes, labels, self.class_ids)
