"""Prediction: model -> detections in original image pixels (compiled forward, decode, NMS).

`make_predict_fn` is the compiled part (input pixels, normalised boxes); `iter_results`
feeds a dataset through it and maps every box back to its image's own pixels, as COCO
results. Evaluation (`detector.evaluation`) scores what `iter_results` yields.
"""

from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from detector.boxes import to_image_pixels, xyxy_to_xywh
from detector.data.pipeline import make_eval_dataset
from detector.data.records import Dataset
from detector.model import head_metadata
from detector.postprocess import decode, nms


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


def iter_results(
    model: keras.Model,
    dataset: Dataset,
    input_size: int,
    batch_size: int = 16,
    score_threshold: float = 0.005,
    nms_iou: float = 0.45,
    max_detections: int = 100,
    predict_fn: Callable | None = None,
) -> Iterator[tuple[list[dict], list[int]]]:
    """Yields (COCO results, image ids) batch by batch, in record order.

    Images are fed plainly resized or letterboxed as the model was trained (its head's
    ``letterbox``), and boxes mapped back by the inverse to original image pixels. A
    result is ``{"image_id", "category_id" (the dataset's own id), "bbox" (xywh, image
    pixels), "score"}``.

    Args:
        input_size: int. Side of the network input, pixels (a multiple of 32).
        batch_size: int. Images per forward pass. Defaults to 16.
        predict_fn: a `make_predict_fn` result to reuse (its thresholds then apply).
            Defaults to None: one is made from `model` and the thresholds here.
        score_threshold, nms_iou, max_detections: see `make_predict_fn`.
    """
    predict = predict_fn or make_predict_fn(model, score_threshold, nms_iou, max_detections)
    letterbox = head_metadata(model).letterbox
    category_ids = np.asarray(dataset.category_ids)
    for images, indices in make_eval_dataset(dataset.records, input_size, batch_size, letterbox):
        boxes, scores, classes, valid = (t.numpy() for t in predict(images))
        results, image_ids = [], []
        for i, index in enumerate(indices.numpy()):
            record = dataset.records[index]
            image_ids.append(int(record.image_id))
            n = valid[i]
            unit = np.clip(boxes[i, :n], 0.0, 1.0)
            pixels = to_image_pixels(
                unit * input_size, record.height, record.width, input_size, letterbox
            )
            xywh = np.round(xyxy_to_xywh(pixels), 3).tolist()
            cats = category_ids[classes[i, :n]].tolist()
            rounded = np.round(scores[i, :n].astype(np.float64), 5).tolist()
            results += [
                {"image_id": image_ids[-1], "category_id": c, "bbox": b, "score": s}
                for b, c, s in zip(xywh, cats, rounded, strict=True)
            ]
        yield results, image_ids


def draw_predictions(
    model: keras.Model, dataset: Dataset, predict_fn: Callable, count: int, min_score: float = 0.3
) -> np.ndarray:
    """The first `count` images of `dataset` at the model's input size, with the
    detections scoring at least `min_score` drawn: uint8 (count, S, S, 3) RGB."""
    import cv2

    head = head_metadata(model)
    size = head.input_size
    ds = make_eval_dataset(dataset.records, size, count, head.letterbox)
    images, _ = next(iter(ds.take(1)))
    boxes, scores, classes, valid = (t.numpy() for t in predict_fn(images))
    drawn = []
    for i, image in enumerate(images.numpy().astype(np.uint8)):
        image = np.ascontiguousarray(image)
        n = valid[i]
        for box, score, cls in zip(boxes[i, :n], scores[i, :n], classes[i, :n], strict=True):
            if score < min_score:
                continue
            x1, y1, x2, y2 = (np.clip(box, 0, 1) * size).astype(int)
            cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 1)
            label = f"{head.class_names[cls]} {score:.2f}"
            origin = (x1, max(y1 - 2, 8))
            cv2.putText(image, label, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 0), 1)
        drawn.append(image)
    return np.stack(drawn)
