"""From raw grid outputs to scored boxes: YOLOv2 decoding and class-aware NMS."""

import tensorflow as tf
from keras import ops

from detector.grid import decode_raw


def decode(raw, anchors):
    """Raw grid output to boxes and per-class scores.

    Args:
        raw: (B, S_h, S_w, A, 5 + C) raw network output.
        anchors: (A, 2) anchor w, h in grid cells.

    Returns:
        boxes: (B, S_h·S_w·A, 4) xyxy normalised to the input image (0..1).
        scores: (B, S_h·S_w·A, C) sigmoid(objectness) · softmax(class logits).
    """
    raw = ops.cast(raw, "float32")
    shape = ops.shape(raw)
    cxcywh = decode_raw(raw, anchors)
    xy, wh = cxcywh[..., 0:2], cxcywh[..., 2:4]
    boxes = ops.concatenate([xy - wh / 2, xy + wh / 2], axis=-1)
    scores = ops.sigmoid(raw[..., 4:5]) * ops.softmax(raw[..., 5:], axis=-1)
    batch = shape[0]
    return ops.reshape(boxes, (batch, -1, 4)), ops.reshape(scores, (batch, -1, shape[4] - 5))


def nms(boxes, scores, score_threshold=0.005, iou_threshold=0.45, max_detections=100):
    """Class-aware NMS with TensorFlow's combined NMS op.

    Args:
        boxes: (B, N, 4) xyxy normalised. scores: (B, N, C).
        score_threshold: float. Lower scores are dropped. Defaults to 0.005.
        iou_threshold: float. Same-class overlap above which the lower score goes.
        max_detections: int. Kept per image (and per class at most). Defaults to 100.

    Returns:
        boxes (B, K, 4) xyxy normalised, scores (B, K), classes (B, K) int32,
        valid (B,) int32: the first ``valid[i]`` rows of image i are detections.
    """
    result = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :],
        scores,
        max_output_size_per_class=max_detections,
        max_total_size=max_detections,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        clip_boxes=False,
    )
    return (
        result.nmsed_boxes,
        result.nmsed_scores,
        tf.cast(result.nmsed_classes, tf.int32),
        result.valid_detections,
    )
