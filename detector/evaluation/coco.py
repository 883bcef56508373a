"""COCO scoring: detections in original image pixels (`detector.inference.detector`) -> pycocotools.

The one evaluation path: the ``BestCocoAP`` callback and ``evaluate.py`` both call
``evaluate_model``, so the AP printed during training is the AP of the checkpoint; it
scores an exported model (a `detector.inference.runtimes.Runtime`) or a
`detector.inference.detector.Detector`
the same way. The ground truth is `detector.data.coco.ground_truth`.

A Keras model's detections stay arrays batch by batch (`batch_coco_detections` in
`detector.inference.results`), and `EvalImages` keeps the resized validation batches in memory
across the evaluations of a training run, since they never change.
"""

import json

import keras
import numpy as np
import tensorflow as tf
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.data.coco import ground_truth
from detector.data.records import Dataset, Records
from detector.evaluation.streaming import StreamingCocoEval
from detector.inference.detector import iter_results
from detector.inference.forward import make_predict_fn
from detector.inference.results import CocoDetections, batch_coco_detections
from detector.model.network import head_metadata
from detector.utils.atomic import atomic_write_text
from detector.utils.quiet import quiet_stdout

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
STAT_LABELS = (
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
)


def load_coco(annotation_file: str) -> COCO:
    """pycocotools' ground truth, without its chatter on stdout."""
    with quiet_stdout():
        return COCO(annotation_file)


def coco_metrics(coco_gt: COCO, results: list[dict], curves: dict | None = None) -> dict:
    """Runs COCOeval (bbox) on a results list; returns the 12 stats and ``per_class``.

    ``per_class`` maps each category name to its AP@[.5:.95] (area all, 100 dets), or
    -1 where the category has no ground truth, as COCOeval reports it. A `curves` dict,
    if given, receives the precision-recall curves (see `pr_curves`).
    """
    if not results:
        return empty_metrics(coco_gt)
    with quiet_stdout():
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return metrics_of(evaluator, coco_gt, curves)


def empty_metrics(coco_gt: COCO) -> dict:
    """The metrics of no detections at all: every number 0."""
    categories = coco_gt.loadCats(coco_gt.getCatIds())
    return {**dict.fromkeys(STAT_NAMES, 0.0), "per_class": {c["name"]: 0.0 for c in categories}}


def metrics_of(evaluator: COCOeval, coco_gt: COCO, curves: dict | None = None) -> dict:
    """The metrics dict of a summarized COCOeval (see `coco_metrics`)."""
    metrics = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=False)}
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K) area all, 100 dets
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        per_class[coco_gt.cats[cat_id]["name"]] = float(values.mean()) if values.size else -1.0
    metrics["per_class"] = per_class
    if curves is not None:
        curves.update(pr_curves(evaluator))
    return metrics


def pr_curves(evaluator: COCOeval) -> dict:
    """Class-averaged precision at COCOeval's 101 recall points (area all, 100 dets):
    {"recall": (101,), "IoU=0.50": (101,), "IoU=0.75": (101,), "IoU=0.50:0.95": (101,)}."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    valid = precision > -1
    thresholds = evaluator.params.iouThrs

    def mean(p, v):
        return np.where(v.any(-1), (p * v).sum(-1) / np.maximum(v.sum(-1), 1), 0.0)

    per_t = mean(precision, valid)  # (T, R)
    t50 = int(np.argmin(np.abs(thresholds - 0.5)))
    t75 = int(np.argmin(np.abs(thresholds - 0.75)))
    return {
        "recall": np.asarray(evaluator.params.recThrs),
        "IoU=0.50": per_t[t50],
        "IoU=0.75": per_t[t75],
        "IoU=0.50:0.95": per_t.mean(0),
    }


class EvalImages:
    """The evaluation batches of a split (``data.pipeline.make_eval_dataset``), kept in
    memory as uint8 after their first full pass when they fit in `cache_mb`: a training
    run evaluates the same images at every evaluation, so they are read, decoded and
    resized once.

    Args:
        records: Records. The split's images, in evaluation order.
        cache_mb: float. Memory allowed for the resized images, MB (1e6 bytes); 0 = read
            them at every pass. Defaults to 0.
    """

    def __init__(self, records: Records, cache_mb: float = 0.0):
        self.records = records
        self.cache_mb = float(cache_mb)
        self._datasets: dict[tuple, tf.data.Dataset] = {}

    def fits(self, input_size: int) -> bool:
        """Whether the split's resized uint8 images fit in the budget."""
        return len(self.records) * input_size * input_size * 3 <= self.cache_mb * 1e6

    def batches(self, input_size: int, batch_size: int, letterbox: bool) -> tf.data.Dataset:
        """(images (B, S, S, 3) float32 0..255, record indices (B,)) in record order."""
        from detector.data.pipeline import make_eval_dataset

        key = (int(input_size), int(batch_size), bool(letterbox))
        if key in self._datasets:
            return self._datasets[key]
        ds = make_eval_dataset(self.records, *key)
        if self.fits(input_size):
            # The pixels are whole numbers 0..255: uint8 holds them exactly at 1/4 of
            # float32's memory. Only the budget's one entry is kept.
            ds = ds.map(lambda images, index: (tf.cast(images, tf.uint8), index)).cache()
            ds = ds.map(lambda images, index: (tf.cast(images, tf.float32), index))
            self._datasets = {key: ds.prefetch(tf.data.AUTOTUNE)}
            return self._datasets[key]
        return ds


def evaluate_model(
    model,
    dataset: Dataset,
    input_size: int,
    coco_gt: COCO | None = None,
    curves=None,
    chunk_images: int = 64,
    images: EvalImages | None = None,
    keep_results: bool = True,
    **predict_kwargs,
) -> tuple[dict, list[dict]]:
    """Predicts the dataset and scores it with COCOeval. Returns (metrics, results).

    `model`: a Keras inference model, a `detector.inference.runtimes.Runtime` (an exported model)
    or a `detector.inference.detector.Detector` (`detector.inference.detector.iter_results`, which
    `predict_kwargs` go to: batch_size, score_threshold, nms_iou, max_detections,
    predict_fn).

    `coco_gt`: the ground truth, when the caller has it already (default: built from
    `dataset`). The per-image matching of every `chunk_images` images runs in a worker
    thread while the model predicts the next ones (`detector.evaluation.streaming`); the numbers
    are those of one COCOeval over all results. `images`: the split's `EvalImages` to
    reuse across calls (a Keras model only; default: the images are read again).
    `keep_results`: return the COCO results list (else an empty list: a training run
    needs the metrics only). Defaults to True."""
    coco_gt = coco_gt or ground_truth(dataset)
    stream = StreamingCocoEval(coco_gt)
    if isinstance(model, keras.Model):
        images = images or EvalImages(dataset.records)
        parts = _stream_keras(
            model, dataset, input_size, stream, images, chunk_images, **predict_kwargs
        )
        found = any(len(part) for part in parts)
        results = [r for part in parts for r in part.to_results()] if keep_results else []
    else:
        results = _stream_results(
            model, dataset, input_size, stream, chunk_images, **predict_kwargs
        )
        found = bool(results)
    evaluator = stream.finish()
    if not found:
        return empty_metrics(coco_gt), []
    return metrics_of(evaluator, coco_gt, curves), results


def _stream_keras(
    model: keras.Model,
    dataset: Dataset,
    input_size: int,
    stream: StreamingCocoEval,
    images: EvalImages,
    chunk_images: int,
    batch_size: int = 16,
    score_threshold: float = 0.005,
    nms_iou: float = 0.45,
    max_detections: int = 100,
    predict_fn=None,
) -> list:
    """Feeds `stream` the detections of a Keras model, `chunk_images` images at a time;
    returns the `CocoDetections` of every batch."""
    predict = predict_fn or make_predict_fn(model, score_threshold, nms_iou, max_detections)
    letterbox = head_metadata(model).letterbox
    records = dataset.records
    shapes = np.array([(r.height, r.width) for r in records], np.int64).reshape(-1, 2)
    ids = np.array([int(r.image_id) for r in records], np.int64)
    found, pending, pending_ids = [], [], []
    for batch, indices in images.batches(input_size, batch_size, letterbox):
        outputs = tuple(t.numpy() for t in predict(batch))
        rows = indices.numpy()
        detections = batch_coco_detections(
            outputs, shapes[rows], ids[rows], input_size, letterbox, dataset.category_ids
        )
        found.append(detections)
        pending.append(detections)
        pending_ids += ids[rows].tolist()
        if len(pending_ids) >= chunk_images:
            stream.add_detections(CocoDetections.concat(pending), pending_ids)
            pending, pending_ids = [], []
    if pending_ids:
        stream.add_detections(CocoDetections.concat(pending), pending_ids)
    return found


def _stream_results(model, dataset, input_size, stream, chunk_images, **predict_kwargs) -> list:
    """Feeds `stream` the results of a Runtime or Detector (`iter_results`), `chunk_images`
    images at a time; returns them all."""
    all_results, pending, pending_ids = [], [], []
    for results, image_ids in iter_results(model, dataset, input_size, **predict_kwargs):
        all_results += results
        pending += [dict(r) for r in results]  # pycocotools' loadRes adds keys to its input
        pending_ids += image_ids
        if len(pending_ids) >= chunk_images:
            stream.add(pending, pending_ids)
            pending, pending_ids = [], []
    if pending_ids:
        stream.add(pending, pending_ids)
    return all_results


def format_metrics(metrics: dict) -> str:
    """The COCO summary table (12 lines as cocoapi prints them) and per-class AP."""
    lines = [
        f" {label} = {metrics[name]:0.3f}"
        for name, label in zip(STAT_NAMES, STAT_LABELS, strict=False)
    ]
    per_class = metrics.get("per_class", {})
    if per_class:
        width = max(len(n) for n in per_class)
        lines.append("per-class AP@[.5:.95]:")
        lines += [f"  {name:<{width}}  {ap:0.3f}" for name, ap in per_class.items()]
    return "\n".join(lines)


def write_json(obj, path: str) -> None:
    """Writes JSON atomically (temporary file in the same folder, then rename)."""
    atomic_write_text(path, json.dumps(obj, indent=2))
