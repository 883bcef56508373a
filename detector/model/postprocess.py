"""From raw grid outputs to scored boxes: YOLOv2 decoding and class-aware NMS.

Three NMS implementations give the same detections (tested on random clustered boxes):
`combined_nms` (TensorFlow's ``CombinedNonMaxSuppression``: a CPU kernel only),
`padded_nms` (``tf.image.non_max_suppression_padded``: plain tensor ops that run on a
GPU, under XLA too) and `portable_nms` (``NonMaxSuppressionV5`` per class: builtin in
TFLite and ONNX). `nms` picks `padded_nms` when TensorFlow sees a GPU, else
`combined_nms`, so that evaluation's NMS stays on the accelerator where there is one.
"""

import tensorflow as tf
from keras import ops

from detector.model.grid import decode_raw


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
    scores = ops.sigmoid(raw[..., 4:5]) * class_probabilities(raw[..., 5:])
    batch = shape[0]
    return ops.reshape(boxes, (batch, -1, 4)), ops.reshape(scores, (batch, -1, shape[4] - 5))


def class_probabilities(logits):
    """softmax over the class axis; with one class, ones without calling softmax (which
    would be 1 anyway, and which Keras warns about on every single-class model)."""
    if logits.shape[-1] == 1:
        return ops.ones_like(logits)
    return ops.softmax(logits, axis=-1)


def nms(boxes, scores, score_threshold=0.005, iou_threshold=0.45, max_detections=100):
    """Class-aware NMS on the device at hand: `padded_nms` when TensorFlow sees a GPU
    (its ops have GPU kernels), else `combined_nms` (the fastest on a CPU).

    Args:
        boxes: (B, N, 4) xyxy normalised. scores: (B, N, C).
        score_threshold: float. Scores not above it are dropped. Defaults to 0.005.
        iou_threshold: float. Same-class overlap above which the lower score goes.
        max_detections: int. Kept per image (and per class at most). Defaults to 100.

    Returns:
        boxes (B, K, 4) xyxy normalised, scores (B, K), classes (B, K) int32,
        valid (B,) int32: the first ``valid[i]`` rows of image i are detections, by
        decreasing score; the rest are zeros.
    """
    choose = padded_nms if tf.config.list_logical_devices("GPU") else combined_nms
    return choose(boxes, scores, score_threshold, iou_threshold, max_detections)


def combined_nms(boxes, scores, score_threshold=0.005, iou_threshold=0.45, max_detections=100):
    """`nms` (same arguments, same outputs) with TensorFlow's combined NMS op, which has a
    CPU kernel only (on a GPU machine the data go to the host and back)."""
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


def padded_nms(
    boxes,
    scores,
    score_threshold=0.005,
    iou_threshold=0.45,
    max_detections=100,
    tile_size: int = 256,
):
    """`nms` (same arguments, same outputs) from ops with GPU kernels.

    Every (image, class) pair is one row of a batched
    ``tf.image.non_max_suppression_padded`` (greedy NMS computed tile by tile with
    tensor ops, no per-box host round trip), keeping up to ``max_detections`` boxes of
    the class; the ``max_detections`` best of each image's C·K candidates are then taken
    with one ``top_k``. The (B·C, tile, tile) IoU blocks bound the memory: `tile_size`
    (boxes compared at once, default 256) trades it against parallelism.

    Its IoU has a 1e-8 guard in the denominator and suppresses at IoU >= the threshold
    (the combined op: >): the two differ only for a pair of boxes at the threshold
    to about 1e-7.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    shape = tf.shape(scores)
    batch, n, c = shape[0], shape[1], shape[2]
    k = max_detections
    per_class = tf.transpose(scores, [0, 2, 1])  # (B, C, N)
    # xyxy read as [y_min, x_min, y_max, x_max]: IoU is the same with the axes swapped.
    tiled = tf.broadcast_to(boxes[:, None], tf.stack([batch, c, n, 4]))
    indices, count = tf.image.non_max_suppression_padded(
        tiled,
        per_class,
        k,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_to_max_output_size=True,
        canonicalized_coordinates=True,
        tile_size=tile_size,
    )  # (B, C, K), (B, C)
    kept = tf.gather(per_class, indices, batch_dims=2)
    # The lowest float marks the padding, so that no padding outranks a kept box.
    kept = tf.where(tf.range(k) < count[..., None], kept, tf.float32.min)
    top_scores, top = tf.math.top_k(tf.reshape(kept, tf.stack([batch, -1])), k)
    found = top_scores > tf.float32.min
    chosen = tf.gather(
        boxes, tf.gather(tf.reshape(indices, [batch, -1]), top, batch_dims=1), batch_dims=1
    )
    zero = tf.zeros_like(top_scores)
    return (
        tf.where(found[..., None], chosen, 0.0),
        tf.where(found, top_scores, zero),
        tf.where(found, top // k, 0),
        tf.reduce_sum(tf.cast(found, tf.int32), axis=1),
    )


def portable_nms(boxes, scores, score_threshold=0.005, iou_threshold=0.45, max_detections=100):
    """`nms` (same arguments, same outputs) from ops the builtin TFLite interpreter runs.

    ``tf.image.combined_non_max_suppression`` is a Flex op in TFLite; this unrolls the C
    classes at trace time into C ``NonMaxSuppressionV5`` ops (builtin
    NON_MAX_SUPPRESSION_V5 in TFLite, NonMaxSuppression in ONNX), each keeping up to
    ``max_detections`` boxes of its class, then takes the ``max_detections`` best of the
    C·K candidates. A static batch is unrolled too (no control flow); a dynamic one runs
    through ``tf.map_fn``. The number of classes must be static.
    """
    settings = (score_threshold, iou_threshold, max_detections)
    k = max_detections
    if boxes.shape[0] is not None:
        images = [_image_nms(boxes[i], scores[i], *settings) for i in range(boxes.shape[0])]
        return tuple(tf.stack(outputs) for outputs in zip(*images, strict=True))
    signature = (
        tf.TensorSpec((k, 4), tf.float32),
        tf.TensorSpec((k,), tf.float32),
        tf.TensorSpec((k,), tf.int32),
        tf.TensorSpec((), tf.int32),
    )
    return tf.map_fn(
        lambda x: _image_nms(x[0], x[1], *settings), (boxes, scores), fn_output_signature=signature
    )


def _image_nms(boxes, scores, score_threshold, iou_threshold, max_detections):
    """`portable_nms` of one image: boxes (N, 4), scores (N, C) -> (K, 4), (K,), (K,), ()."""
    k = max_detections
    kept_scores, kept_indices = [], []
    for c in range(scores.shape[-1]):
        indices, selected, count = tf.raw_ops.NonMaxSuppressionV5(
            boxes=boxes,
            scores=scores[:, c],
            max_output_size=k,
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
            soft_nms_sigma=0.0,
            pad_to_max_output_size=True,
        )
        # The lowest float marks the padding, so that no padding outranks a kept box.
        kept_scores.append(tf.where(tf.range(k) < count, selected, tf.float32.min))
        kept_indices.append(indices)
    top_scores, top = tf.math.top_k(tf.concat(kept_scores, 0), k)
    found = tf.cast(top_scores > tf.float32.min, tf.float32)
    chosen = tf.gather(boxes, tf.gather(tf.concat(kept_indices, 0), top))
    return (
        chosen * found[:, None],
        top_scores * found,
        (top // k) * tf.cast(found, tf.int32),
        tf.cast(tf.reduce_sum(found), tf.int32),
    )
