"""YOLOv2's "dimension clusters": k-means over box shapes with distance 1 − IoU."""

import numpy as np

from detector.boxes import shape_iou


def kmeans_anchors(wh: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """Clusters box widths/heights into k anchors.

    Args:
        wh: (N, 2) float box widths and heights, any unit (the anchors come out in it).
        k: int. Number of anchors.
        seed: int. Seed of the k-means++ initialisation. Defaults to 0.
        iterations: int. Upper bound on Lloyd iterations. Defaults to 100.

    Returns:
        (k, 2) float32 anchors sorted by area. Each cluster centre is the median of its
        members (robust to outliers); with fewer than k distinct shapes, shapes repeat.
    """
    wh = np.asarray(wh, np.float64)
    wh = wh[(wh > 0).all(axis=1)]
    if len(wh) == 0:
        raise ValueError("kmeans_anchors: no boxes with positive width and height")
    rng = np.random.default_rng(seed)
    centres = wh[[rng.integers(len(wh))]]
    while len(centres) < k:
        distance = 1.0 - shape_iou(wh, centres).max(axis=1)
        weights = distance**2
        total = weights.sum()
        pick = rng.choice(len(wh), p=weights / total) if total > 0 else rng.integers(len(wh))
        centres = np.vstack([centres, wh[pick]])
    assignment = None
    for _ in range(iterations):
        new_assignment = np.argmax(shape_iou(wh, centres), axis=1)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        for j in range(k):
            members = wh[assignment == j]
            if len(members):
                centres[j] = np.median(members, axis=0)
    order = np.argsort(centres.prod(axis=1))
    return centres[order].astype(np.float32)


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Average over boxes of the best shape IoU with any anchor (YOLOv2's "Avg IOU")."""
    return float(shape_iou(wh, anchors).max(axis=1).mean())
