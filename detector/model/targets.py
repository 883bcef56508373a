"""Ground-truth encoding onto the YOLOv2 grid (vectorised numpy), and its inverse.

Boxes come in as xyxy pixels of the network input; the encoded targets hold
``cx, cy, w, h`` normalised to the image (0..1), see ``detector.model.loss.YoloLoss``.
"""

import numpy as np

from detector.model.grid import STRIDE
from detector.utils.boxes import cxcywh_to_xyxy, shape_iou, xyxy_to_cxcywh


def encode_targets(
    boxes: np.ndarray,
    classes: np.ndarray,
    image_size: tuple[int, int],
    anchors: np.ndarray,
    max_boxes: int,
    iou_thresh: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Assigns each box to the best-shaped anchor of the cell holding its centre, and
    also to every other anchor of that cell whose shape IoU with it exceeds
    ``iou_thresh`` (darknet's ``iou_thresh`` of YOLOv4's ``[yolo]`` layer; 1 = best only).

    Args:
        boxes: (N, 4) float, xyxy in pixels of the (resized) network input.
        classes: (N,) int class indices.
        image_size: (height, width) of the network input in pixels, multiples of 32.
        anchors: (A, 2) anchor w, h in grid cells.
        max_boxes: int. Rows of the padded box list; extra boxes are left out of it.
        iou_thresh: float. Shape-IoU threshold for the extra anchors (see above).

    Returns:
        y_true: (H/32, W/32, A, 6) float32: cx, cy, w, h (normalised), 1, class index,
            at the responsible anchors; zeros elsewhere. When two boxes want the same
            anchor of the same cell, a best-anchor match beats an extra one, and among
            equals the later box wins (as in darknet).
        true_boxes: (max_boxes, 4) float32 cx, cy, w, h normalised, zero padded.
    """
    height, width = image_size
    grid_h, grid_w = height // STRIDE, width // STRIDE
    anchors = np.asarray(anchors, dtype=np.float32)
    y_true = np.zeros((grid_h, grid_w, len(anchors), 6), np.float32)
    true_boxes = np.zeros((max_boxes, 4), np.float32)
    if len(boxes) == 0:
        return y_true, true_boxes
    norm = xyxy_to_cxcywh(boxes) / np.array([width, height, width, height], np.float32)
    cols = np.clip((norm[:, 0] * grid_w).astype(np.int64), 0, grid_w - 1)
    rows = np.clip((norm[:, 1] * grid_h).astype(np.int64), 0, grid_h - 1)
    ious = shape_iou(norm[:, 2:] * [grid_w, grid_h], anchors)
    best = np.argmax(ious, axis=1)
    extra = ious > iou_thresh
    extra[np.arange(len(best)), best] = False
    values = np.concatenate(
        [norm, np.ones((len(norm), 1), np.float32), np.asarray(classes, np.float32)[:, None]],
        axis=1,
    )
    box, anchor = np.nonzero(extra)
    y_true[rows[box], cols[box], anchor] = values[box]
    y_true[rows, cols, best] = values
    kept = norm[:max_boxes]
    true_boxes[: len(kept)] = kept
    return y_true, true_boxes


def decode_targets(y_true: np.ndarray, image_size: tuple[int, int]):
    """Inverse of ``encode_targets``: the boxes (xyxy pixels) and classes it holds."""
    height, width = image_size
    cells = y_true[y_true[..., 4] > 0]
    boxes = cxcywh_to_xyxy(cells[:, :4]) * np.array([width, height, width, height], np.float32)
    return boxes, cells[:, 5].astype(np.int32)
