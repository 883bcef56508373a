"""COCO scoring: detections in original image pixels (`detector.predict`) -> pycocotools.

The one evaluation path: the ``BestCocoAP`` callback and ``evaluate.py`` both call
``evaluate_model``, so the AP printed during training is the AP of the checkpoint; it
scores an exported model (a `detector.runtimes.Runtime`) or a `detector.predict.Detector`
the same way. The ground truth is `detector.data.coco.ground_truth`.
"""

import contextlib
import io
import json

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.data.coco import ground_truth
from detector.data.records import Dataset
from detector.io import atomic_write_text
from detector.predict import iter_results
from detector.streaming_eval import StreamingCocoEval

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
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(annotation_file)


def coco_metrics(coco_gt: COCO, results: list[dict], curves: dict | None = None) -> dict:
    """Runs COCOeval (bbox) on a results list; returns the 12 stats and ``per_class``.

    ``per_class`` maps each category name to its AP@[.5:.95] (area all, 100 dets), or
    -1 where the category has no ground truth, as COCOeval reports it. A `curves` dict,
    if given, receives the precision-recall curves (see `pr_curves`).
    """
    if not results:
        return empty_metrics(coco_gt)
    with contextlib.redirect_stdout(io.StringIO()):
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


def evaluate_model(
    model,
    dataset: Dataset,
    input_size: int,
    coco_gt: COCO | None = None,
    curves=None,
    chunk_images: int = 64,
    **predict_kwargs,
) -> tuple[dict, list[dict]]:
    """Predicts the dataset (`detector.predict.iter_results`, which `predict_kwargs` go
    to) and scores it with COCOeval. Returns (metrics, results).

    `model`: a Keras inference model, a `detector.runtimes.Runtime` (an exported model)
    or a `detector.predict.Detector`.

    `coco_gt`: the ground truth, when the caller has it already (default: built from
    `dataset`). The per-image matching of every `chunk_images` images runs in a worker
    thread while the model predicts the next ones (`detector.streaming_eval`); the numbers
    are those of one COCOeval over all results."""
    coco_gt = coco_gt or ground_truth(dataset)
    stream = StreamingCocoEval(coco_gt)
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
    if not all_results:
        stream.finish()
        return empty_metrics(coco_gt), all_results
    return metrics_of(stream.finish(), coco_gt, curves), all_results


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
