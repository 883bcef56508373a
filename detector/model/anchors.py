"""YOLOv2's "dimension clusters": k-means over box shapes with distance 1 − IoU.

Command line::

    python -m detector.data anchors SPEC [--k 5] [--input-size 416] [--letterbox] [--json OUT]

prints the anchors in grid cells (darknet's unit, ready for ``model.anchors``) and the
mean IoU between the training boxes and their best anchor.
"""

import numpy as np

from detector.model.grid import STRIDE
from detector.utils.boxes import shape_iou


def kmeans_anchors(
    wh: np.ndarray,
    k: int,
    seed: int = 0,
    iterations: int = 100,
    restarts: int = 10,
    max_boxes: int = 20_000,
) -> np.ndarray:
    """Clusters box widths/heights into k anchors.

    Lloyd's algorithm with distance 1 − IoU (boxes and centres sharing one centre), from
    `restarts` k-means++ initialisations; the run with the highest mean best IoU wins.

    Args:
        wh: (N, 2) float box widths and heights, any unit (the anchors come out in it).
        k: int. Number of anchors.
        seed: int. Seed of the initialisations. Defaults to 0.
        iterations: int. Upper bound on Lloyd iterations per run. Defaults to 100.
        restarts: int. Number of runs. Defaults to 10.
        max_boxes: int. Above this many boxes, a seeded random sample of this size is
            clustered (COCO has 860 000 boxes: all of them would take minutes at every
            start; 20 000 place the centres within sampling noise). Defaults to 20 000.

    Returns:
        (k, 2) float32 anchors sorted by area. Each cluster centre is the median of its
        members (robust to outliers); with fewer than k distinct shapes, shapes repeat.
    """
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(axis=1) & np.isfinite(wh).all(axis=1)]
    if len(wh) == 0:
        raise ValueError("kmeans_anchors: no boxes with positive width and height")
    rng = np.random.default_rng(seed)
    if len(wh) > max_boxes:
        wh = wh[rng.choice(len(wh), max_boxes, replace=False)]
    best, best_iou = None, -1.0
    for _ in range(max(1, restarts)):
        centres = _lloyd(wh, _kmeans_pp(wh, k, rng), iterations)
        iou = mean_best_iou(wh, centres)
        if iou > best_iou:
            best, best_iou = centres, iou
    order = np.argsort(best.prod(axis=1))
    return best[order].astype(np.float32)


def _kmeans_pp(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding under the 1 − IoU distance."""
    centres = wh[[rng.integers(len(wh))]]
    while len(centres) < k:
        weights = (1.0 - shape_iou(wh, centres).max(axis=1)) ** 2
        total = weights.sum()
        pick = rng.choice(len(wh), p=weights / total) if total > 0 else rng.integers(len(wh))
        centres = np.vstack([centres, wh[pick]])
    return centres


def _lloyd(wh: np.ndarray, centres: np.ndarray, iterations: int) -> np.ndarray:
    assignment = None
    for _ in range(iterations):
        new_assignment = np.argmax(shape_iou(wh, centres), axis=1)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for j in range(len(centres)):
            members = wh[assignment == j]
            if len(members):
                centres[j] = np.median(members, axis=0)
    return centres


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Average over boxes of the best shape IoU with any anchor (YOLOv2's "Avg IOU")."""
    return float(shape_iou(wh, anchors).max(axis=1).mean())


def box_shapes(records, input_size: int, letterbox: bool = False) -> np.ndarray:
    """(N, 2) widths and heights of every box, in grid cells of the network input.

    `records`: `detector.data.records.Records` (its ``box_table``). With a plain resize
    each axis scales to `input_size`; with letterboxing both scale by the longer side, as
    the pipeline maps them.
    """
    table = np.asarray(records.box_table(), np.float64)
    wh, image_wh = table[:, :2], table[:, 2:]
    if letterbox:
        wh = wh / image_wh.max(axis=1, keepdims=True)
    else:
        wh = wh / image_wh
    return wh * (input_size / STRIDE)
