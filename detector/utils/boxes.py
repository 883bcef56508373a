"""Box formats and IoU, as pure numpy functions.

Formats (one per name, everywhere in the project):
- ``xyxy``: ``(x1, y1, x2, y2)`` corners; pixels unless a docstring says normalised.
- ``cxcywh``: ``(cx, cy, w, h)`` centre and size; same unit as the input.
- ``xywh``: COCO's ``(x, y, w, h)`` top-left corner and size, pixels.

Two pixel spaces: *image pixels* of the original image (height, width), as the records
hold boxes, and *input pixels* of the square (size, size) network input. An image maps
onto the input plainly resized (each axis by its own gain, as YOLOv2 does) or letterboxed
(both axes by size / max(height, width), the rest padded, centred): `letterbox_geometry`
says how, `to_input_pixels` and `to_image_pixels` map boxes there and back.
"""

import numpy as np


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """Corners to centre/size. boxes: (..., 4) xyxy. Returns (..., 4) cxcywh."""
    boxes = np.asarray(boxes, dtype=np.float32)
    wh = boxes[..., 2:] - boxes[..., :2]
    return np.concatenate([boxes[..., :2] + wh / 2, wh], axis=-1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Centre/size to corners. boxes: (..., 4) cxcywh. Returns (..., 4) xyxy."""
    boxes = np.asarray(boxes, dtype=np.float32)
    half = boxes[..., 2:] / 2
    return np.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """Corners to COCO's top-left/size. boxes: (..., 4) xyxy. Returns (..., 4) xywh."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of xyxy boxes (..., 4); degenerate boxes have area 0."""
    wh = np.clip(boxes[..., 2:] - boxes[..., :2], 0, None)
    return wh[..., 0] * wh[..., 1]


def iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU. a: (N, 4), b: (M, 4) xyxy. Returns (N, M); 0 where the union is 0."""
    a = np.asarray(a, dtype=np.float64)[:, None, :]
    b = np.asarray(b, dtype=np.float64)[None, :, :]
    top_left = np.maximum(a[..., :2], b[..., :2])
    bottom_right = np.minimum(a[..., 2:], b[..., 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    union = box_area(a) + box_area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def shape_iou(wh_a: np.ndarray, wh_b: np.ndarray) -> np.ndarray:
    """IoU of boxes sharing one centre (YOLOv2's anchor matching and k-means distance).

    wh_a: (N, 2), wh_b: (K, 2) widths/heights in one unit. Returns (N, K).
    """
    wh_a = np.asarray(wh_a, dtype=np.float64)[:, None, :]
    wh_b = np.asarray(wh_b, dtype=np.float64)[None, :, :]
    inter = np.prod(np.minimum(wh_a, wh_b), axis=-1)
    union = np.prod(wh_a, axis=-1) + np.prod(wh_b, axis=-1) - inter
    return inter / np.maximum(union, 1e-12)


def clip_xyxy(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Clip xyxy pixel boxes (..., 4) to an image of the given size."""
    boxes = np.array(boxes, dtype=np.float32)
    boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, width)
    boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, height)
    return boxes


def letterbox_geometry(
    height: int, width: int, size: int, letterbox: bool
) -> tuple[float, float, float, float]:
    """How an image of (height, width) image pixels maps onto the (size, size) input.

    Returns:
        (gain_x, gain_y, pad_x, pad_y): input pixel = image pixel * gain + pad, per axis.
        Plain resize: gains size / width and size / height, no pad. Letterbox: one gain
        size / max(height, width); the resized image (rounded to whole pixels) is centred,
        the pads are whole input pixels.
    """
    if not letterbox:
        return size / width, size / height, 0.0, 0.0
    gain = size / max(height, width)
    new_w, new_h = round(width * gain), round(height * gain)
    return gain, gain, (size - new_w) // 2, (size - new_h) // 2


def to_input_pixels(
    boxes: np.ndarray, height: int, width: int, size: int, letterbox: bool
) -> np.ndarray:
    """xyxy (N, 4) in image pixels -> float32 (N, 4) xyxy in input pixels (not clipped)."""
    gx, gy, px, py = letterbox_geometry(height, width, size, letterbox)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * np.array([gx, gy, gx, gy], np.float32)
    return boxes + np.array([px, py, px, py], np.float32)


def to_image_pixels(
    boxes: np.ndarray, height: int, width: int, size: int, letterbox: bool
) -> np.ndarray:
    """Inverse of `to_input_pixels`: xyxy (..., 4) in input pixels -> float64 xyxy in image
    pixels, clipped to the image."""
    gx, gy, px, py = letterbox_geometry(height, width, size, letterbox)
    out = (np.asarray(boxes, np.float64) - [px, py, px, py]) / [gx, gy, gx, gy]
    return np.clip(out, 0.0, [width, height, width, height])
