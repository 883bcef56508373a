"""COCO evaluation: detections in original image pixels -> results JSON -> pycocotools.

The one evaluation path: the ``BestCocoAP`` callback and ``evaluate.py`` both call
``evaluate_model``, so the AP printed during training is the AP of the checkpoint.
"""

import contextlib
import io
import json
import os

import numpy as np
import tensorflow as tf
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.boxes import xyxy_to_xywh
from detector.data.augment import to_image_pixels
from detector.data.pipeline import make_eval_dataset
from detector.data.records import Dataset
from detector.data.tfrecord import PackedRecords
from detector.io import atomic_write_text
from detector.model import head_metadata
from detector.postprocess import decode, nms
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
    return {"recall": np.asarray(evaluator.params.recThrs), "IoU=0.50": per_t[t50],
            "IoU=0.75": per_t[t75], "IoU=0.50:0.95": per_t.mean(0)}  # fmt: skip


def make_predict_fn(model, score_threshold=0.005, nms_iou=0.45, max_detections=100):
    """A compiled function: images (B, H, W, 3) -> NMS outputs (see ``postprocess.nms``)."""
    anchors = tf.constant(head_metadata(model).anchors, tf.float32)

    @tf.function(reduce_retracing=True)
    def predict(images):
        boxes, scores = decode(model(images, training=False), anchors)
        return nms(boxes, scores, score_threshold, nms_iou, max_detections)

    return predict


def iter_results(
    model,
    dataset: Dataset,
    input_size: int,
    batch_size: int = 16,
    score_threshold: float = 0.005,
    nms_iou: float = 0.45,
    max_detections: int = 100,
    predict_fn=None,
):
    """Yields (COCO results, image ids) batch by batch, in record order.

    Images are fed plainly resized or letterboxed as the model was trained (its head's
    ``letterbox``), and boxes mapped back by the inverse, to original pixels."""
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


def ground_truth(dataset: Dataset) -> COCO:
    """The COCO ground truth of exactly the images and boxes of `dataset`.

    COCO data: its own json (areas, crowd flags and ids as published), restricted to the
    records the readers kept and the annotations they accepted. Other formats: built from
    the records (area = box area, ignore regions as ``iscrowd=1``), with the dataset's
    image and category ids.
    """
    if dataset.annotation_file is not None:
        with open(dataset.annotation_file, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(dataset.records, PackedRecords):  # its json holds just the kept ones
            kept = {im["id"] for im in data["images"]}
        else:
            kept = {r.image_id for r in dataset.records}
        annotations = data.get("annotations") or []
        if dataset.coco_keep is not None:
            annotations = [annotations[i] for i in dataset.coco_keep]
        data["images"] = [
            im for im in data["images"] if isinstance(im, dict) and im.get("id") in kept
        ]
        data["annotations"] = [a for a in annotations if a["image_id"] in kept]
    else:
        data = records_to_coco(dataset)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def records_to_coco(dataset: Dataset) -> dict:
    """A COCO ``instances`` dict of the records: boxes and ignore regions in pixels."""
    images, annotations = [], []
    for record in dataset.records:
        images.append({"id": int(record.image_id), "width": int(record.width),
                       "height": int(record.height),
                       "file_name": os.path.basename(record.path)})  # fmt: skip
        for boxes, classes, crowd in (
            (record.boxes, record.classes, 0),
            (record.ignore, np.zeros(len(record.ignore), np.int64), 1),
        ):
            for box, cls in zip(np.asarray(boxes, np.float64), classes, strict=True):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": int(record.image_id),
                    "category_id": int(dataset.category_ids[int(cls)]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": crowd,
                })  # fmt: skip
    categories = [{"id": int(i), "name": n} for i, n in zip(dataset.category_ids, dataset.names,
                                                            strict=True)]  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": categories}


def evaluate_model(
    model,
    dataset: Dataset,
    input_size: int,
    coco_gt: COCO | None = None,
    curves=None,
    chunk_images: int = 64,
    **predict_kwargs,
) -> tuple[dict, list[dict]]:
    """Predicts the dataset and scores it with COCOeval. Returns (metrics, results).

    The per-image matching of every `chunk_images` images runs in a worker thread while
    the model predicts the next ones (`detector.streaming_eval`); the numbers are those of
    one COCOeval over all results."""
    coco_gt = coco_gt or ground_truth(dataset)
    stream = StreamingCocoEval(coco_gt)
    all_results, pending, pending_ids = [], [], []
    for results, image_ids in iter_results(model, dataset, input_size, **predict_kwargs):
        all_results += results
        pending += results
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
