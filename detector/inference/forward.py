"""The compiled forward pass of a Keras inference model: input pixels -> NMS outputs.

It lives apart from `detector.inference.detector` because `detector.inference.runtimes`
wraps it (a ``.keras`` Runtime) and `detector.inference.detector` builds on runtimes:
keeping it here keeps the imports one-way.
"""

from collections.abc import Callable

import keras
import tensorflow as tf

from detector.model.network import head_metadata
from detector.model.postprocess import decode, nms


def make_predict_fn(
    model: keras.Model,
    score_threshold: float = 0.005,
    nms_iou: float = 0.45,
    max_detections: int = 100,
) -> Callable:
    """A compiled function: images (B, H, W, 3) float32 input pixels 0..255 -> the NMS
    outputs (boxes (B, max_detections, 4) xyxy normalised to the input, scores, classes,
    valid counts (B,); see ``postprocess.nms``).

    Args:
        model: keras.Model. An inference model (its ``yolo_head`` gives the anchors).
        score_threshold: float. Detections scoring below are dropped. Defaults to 0.005.
        nms_iou: float. IoU above which NMS suppresses a box of the same class.
            Defaults to 0.45.
        max_detections: int. Detections kept per image. Defaults to 100.
    """
    anchors = tf.constant(head_metadata(model).anchors, tf.float32)

    @tf.function(reduce_retracing=True)
    def predict(images):
        boxes, scores = decode(model(images, training=False), anchors)
        return nms(boxes, scores, score_threshold, nms_iou, max_detections)

    return predict
