"""The validation report of a detector on one dataset split: what ``evaluate.py`` and the end
of ``train.py`` print and write.

`validate` predicts the split once (`detector.evaluation.coco.evaluate_model`), prints the COCO
table and the report of those results (`detector.evaluation.report`: per-class table, TIDE errors,
VOC mAP on request) and writes, in one folder:

- the report's pictures (`detector.evaluation.plots.PICTURES`) and ``report.json`` (the COCO
  metrics, ``report`` and, with a sweep, ``sweep``; see `as_json`);
- ``val_pred_K.jpg`` / ``val_labels_K.jpg``: grids of the first images of the split with
  the detections scoring >= the report's confidence, and with the ground truth, drawn on
  the images as displayed (boxes in original image pixels);
- ``predictions.json`` (the COCO results scored) on request;
- ``speed_accuracy.png`` for a sweep over input sizes: AP, AP50, AP75 and images per second
  of the model's forward pass (no resize, no NMS) at each size.
"""

import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import cv2
import keras
import numpy as np
import tensorflow as tf
from pycocotools.coco import COCO

from detector.data.coco import ground_truth
from detector.data.records import Dataset
from detector.evaluation.coco import coco_metrics, evaluate_model, format_metrics, write_json
from detector.evaluation.plots import plot_speed_accuracy
from detector.evaluation.report import format_report, write_report
from detector.inference.results import draw_boxes
from detector.model.grid import STRIDE
from detector.model.network import head_metadata
from detector.utils.atomic import atomic_write_bytes, atomic_write_json

DEFAULT_CONF = 0.25  # the report's operating point (TP / FP / FN, confusion matrix)
GRID_FILES = 2  # val_pred_0.jpg, val_pred_1.jpg (and val_labels_*)
GRID_ROWS, GRID_COLUMNS = 2, 4  # images per grid file
TILE = 320  # pixels of one image's square in a grid
PAD = 114  # grey around an image in its tile
SWEEP_WARMUP, SWEEP_REPEATS = 2, 5  # forward passes not timed, then timed (median)


def validate(
    model,
    dataset: Dataset,
    *,
    out_dir: str,
    input_size: int,
    conf: float = DEFAULT_CONF,
    predict_kwargs: dict | None = None,
    voc: bool = False,
    sizes: Sequence[int] = (),
    save_json: bool = False,
    coco_gt: COCO | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Predicts `dataset` once, prints the COCO table and the report, writes the files of
    the module docstring into `out_dir` (created if needed).

    Args:
        model: keras.Model (an inference model), `detector.inference.runtimes.Runtime` or
            `detector.inference.detector.Detector`.
        dataset: Dataset. The split to score.
        out_dir: str. Folder of the outputs.
        input_size: int. Network input side, pixels.
        conf: float. Report operating point: the TP / FP / FN counts, the confusion
            matrix and the drawn predictions take detections scoring >= it. Defaults to
            0.25. The AP takes every detection `predict_kwargs` keep.
        predict_kwargs: dict. `evaluate_model`'s batch_size, score_threshold, nms_iou,
            max_detections (`detector.engine.build.eval_kwargs`). Defaults to its defaults.
        voc: bool. Also print VOC mAP@0.5 (``report.json`` always has it). Defaults to False.
        sizes: sequence of int. Input sizes of a speed / accuracy sweep (a Keras model
            only). Defaults to () (none).
        save_json: bool. Write the COCO results as ``predictions.json``. Defaults to False.
        coco_gt: COCO. The ground truth of `dataset`, when the caller has it. Defaults to
            None (built from `dataset`).
        log: where the printed lines go. Defaults to print.

    Returns:
        {"metrics": `evaluate_model`'s metrics, "report": `write_report`'s dict,
        "files": names written in `out_dir`, "sweep": rows of `speed_accuracy` (only with
        `sizes`)}.
    """
    check_sweep(model, sizes)
    coco_gt = coco_gt or ground_truth(dataset)
    kwargs = dict(predict_kwargs or {})
    metrics, results = evaluate_model(model, dataset, input_size, coco_gt=coco_gt, **kwargs)
    summary = _report(coco_gt, results, metrics, dataset, out_dir, conf, voc, log)
    if save_json:
        atomic_write_json(os.path.join(out_dir, "predictions.json"), results, indent=None)
        summary["files"].append("predictions.json")
    if sizes:
        known = {int(input_size): metrics}
        summary["sweep"] = speed_accuracy(model, dataset, coco_gt, sizes, kwargs, known)
        log("")
        log(format_sweep(summary["sweep"]))
        plot_speed_accuracy(summary["sweep"], os.path.join(out_dir, "speed_accuracy.png"))
        summary["files"].append("speed_accuracy.png")
    return _finish(summary, out_dir, log)


def validate_results(
    coco_gt: COCO,
    results: list[dict],
    dataset: Dataset,
    *,
    out_dir: str,
    conf: float = DEFAULT_CONF,
    voc: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """`validate` of an existing COCO results list (``bbox`` xywh in original image
    pixels): the same printout and files, without predictions.json or a sweep. The grids
    are left out, with a warning, when the images of `dataset` cannot be read."""
    metrics = coco_metrics(coco_gt, results)
    summary = _report(coco_gt, results, metrics, dataset, out_dir, conf, voc, log)
    return _finish(summary, out_dir, log)


def _report(coco_gt, results, metrics, dataset, out_dir, conf, voc, log) -> dict:
    """Prints the COCO table and the report; writes the pictures and the grids."""
    os.makedirs(out_dir, exist_ok=True)
    log(format_metrics(metrics))
    report = write_report(coco_gt, results, names_by_category(dataset), out_dir, conf)
    log("")
    log(report_text(report, voc))
    files = list(report["files"]) + draw_grids(dataset, results, out_dir, conf)
    return {"metrics": metrics, "report": report, "files": files}


def _finish(summary: dict, out_dir: str, log: Callable[[str], None]) -> dict:
    """Writes ``report.json`` (`as_json`) and says where the report is."""
    write_json(as_json(summary), os.path.join(out_dir, "report.json"))
    summary["files"].append("report.json")
    log(f"report written to {out_dir}")
    return summary


def as_json(summary: dict) -> dict:
    """`validate`'s dict as ``report.json`` and ``evaluate.py --json`` hold it: the
    metrics' keys (the 12 COCO numbers, ``per_class``), ``report`` and ``sweep`` if any."""
    extra = {"sweep": summary["sweep"]} if "sweep" in summary else {}
    return {**summary["metrics"], "report": summary["report"], **extra}


def names_by_category(dataset: Dataset) -> list[str]:
    """The class names in ascending category id order (the order of `write_report`)."""
    return [name for _, name in sorted(zip(dataset.category_ids, dataset.names, strict=True))]


def report_text(report: dict, voc: bool) -> str:
    """`format_report`'s text, without its VOC mAP paragraph unless `voc`."""
    parts = format_report(report).split("\n\n")
    return "\n\n".join(p for p in parts if voc or not p.startswith("VOC mAP"))


def draw_grids(dataset: Dataset, results: list[dict], out_dir: str, conf: float) -> list[str]:
    """Writes ``val_pred_K.jpg`` (detections scoring >= `conf`, ``name score``) and
    ``val_labels_K.jpg`` (ground truth, crowd regions left out) of the first
    `GRID_FILES` x `GRID_ROWS` x `GRID_COLUMNS` images; returns the names written (none,
    with a warning on stderr, when the images cannot be read: scored detections need only
    the annotations)."""
    per_file = GRID_ROWS * GRID_COLUMNS
    count = min(len(dataset.records), GRID_FILES * per_file)
    try:
        images = dataset.records.read_images(range(count))
    except ValueError as error:
        print(f"warning: no val_pred / val_labels grids: {error}", file=sys.stderr)
        return []
    found = predictions_by_image(results, dataset.category_ids, conf)
    tiles = {"pred": [], "labels": []}
    for i in range(count):
        record, image = dataset.records[i], images[i]
        boxes, scores, classes = found.get(int(record.image_id), ((), (), ()))
        text = [f"{dataset.names[c]} {s:.2f}" for c, s in zip(classes, scores, strict=True)]
        tiles["pred"].append(fit_tile(draw_boxes(image, np.reshape(boxes, (-1, 4)), text, classes)))
        text = [dataset.names[c] for c in record.classes]
        tiles["labels"].append(fit_tile(draw_boxes(image, record.boxes, text, record.classes)))
    files = []
    for k in range(0, count, per_file):
        for kind, drawn in tiles.items():
            name = f"val_{kind}_{k // per_file}.jpg"
            mosaic = cv2.cvtColor(make_mosaic(drawn[k : k + per_file]), cv2.COLOR_RGB2BGR)
            atomic_write_bytes(os.path.join(out_dir, name), cv2.imencode(".jpg", mosaic)[1])
            files.append(name)
    return files


def predictions_by_image(
    results: list[dict], category_ids: Sequence[int], conf: float
) -> dict[int, tuple]:
    """{image id: (boxes (N, 4) xyxy image pixels, scores (N,), class indices (N,))} of the
    results scoring >= `conf` whose category is one of `category_ids`."""
    class_of = {int(c): i for i, c in enumerate(category_ids)}
    rows = defaultdict(list)
    for r in results:
        if r["score"] >= conf and int(r["category_id"]) in class_of:
            rows[int(r["image_id"])].append((r["bbox"], r["score"], class_of[r["category_id"]]))
    out = {}
    for image_id, found in rows.items():
        xywh = np.array([b for b, _, _ in found], np.float64)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        out[image_id] = (xyxy, [s for _, s, _ in found], [c for _, _, c in found])
    return out


def fit_tile(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> (TILE, TILE, 3): scaled to fit, centred on grey."""
    height, width = image.shape[:2]
    scale = TILE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    tile = np.full((TILE, TILE, 3), PAD, np.uint8)
    top, left = (TILE - size[1]) // 2, (TILE - size[0]) // 2
    tile[top : top + size[1], left : left + size[0]] = small
    return tile


def make_mosaic(tiles: list[np.ndarray]) -> np.ndarray:
    """Up to GRID_ROWS x GRID_COLUMNS tiles, row by row, as one image (rows used only)."""
    rows = -(-len(tiles) // GRID_COLUMNS)
    blank = np.full((TILE, TILE, 3), PAD, np.uint8)
    padded = list(tiles) + [blank] * (rows * GRID_COLUMNS - len(tiles))
    lines = [np.hstack(padded[r * GRID_COLUMNS : (r + 1) * GRID_COLUMNS]) for r in range(rows)]
    return np.vstack(lines)


def check_sweep(model, sizes: Sequence[int]) -> None:
    """ValueError naming --sizes if a sweep is asked of a model that takes one input size
    only (an exported artifact) or a size is not a positive multiple of 32."""
    bad = [size for size in sizes if int(size) != size or size <= 0 or size % STRIDE]
    if bad:
        raise ValueError(f"--sizes: expected positive multiples of {STRIDE}, got {bad[0]}")
    if sizes and not isinstance(model, keras.Model):
        meta = model.metadata
        raise ValueError(
            f"--sizes: this {meta.format} model takes {meta.input_size} px only; sweep "
            "the input size on the .keras checkpoint it was exported from"
        )


def speed_accuracy(
    model: keras.Model,
    dataset: Dataset,
    coco_gt: COCO,
    sizes: Sequence[int],
    predict_kwargs: dict,
    known: dict | None = None,
) -> list[dict]:
    """COCO AP, AP50, AP75 and forward-pass images per second at each input size:
    [{"size", "AP", "AP50", "AP75", "images_per_s"}]. `known`: {size: metrics} already
    computed (not evaluated again)."""
    rows = []
    batch_size = int(predict_kwargs.get("batch_size", 16))
    for size in sizes:
        metrics = (known or {}).get(size)
        if metrics is None:
            metrics, _ = evaluate_model(model, dataset, size, coco_gt=coco_gt, **predict_kwargs)
        speed = forward_speed(model, dataset, size, batch_size)
        rows.append({"size": int(size), **{k: metrics[k] for k in ("AP", "AP50", "AP75")}})
        rows[-1]["images_per_s"] = speed
    return rows


def forward_speed(model: keras.Model, dataset: Dataset, size: int, batch_size: int) -> float:
    """Images per second of the compiled forward pass alone (no resize, decode or NMS) on
    the first `batch_size` images of `dataset` at `size`: the median of `SWEEP_REPEATS`
    timed passes after `SWEEP_WARMUP` untimed ones (tracing, caches)."""
    from detector.data.pipeline import make_eval_dataset

    letterbox = head_metadata(model).letterbox
    images, _ = next(iter(make_eval_dataset(dataset.records, size, batch_size, letterbox)))
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    for _ in range(SWEEP_WARMUP):
        forward(images).numpy()
    seconds = []
    for _ in range(SWEEP_REPEATS):
        start = time.perf_counter()
        forward(images).numpy()  # .numpy() waits for the device
        seconds.append(time.perf_counter() - start)
    return len(images) / max(statistics.median(seconds), 1e-9)


def format_sweep(rows: list[dict]) -> str:
    """The sweep as printed: one line per input size."""
    lines = [
        f"speed / accuracy by input size (images/s: forward pass only, median of "
        f"{SWEEP_REPEATS} after {SWEEP_WARMUP} warm-up passes)",
        f"{'size':>6}{'AP':>8}{'AP50':>8}{'AP75':>8}{'images/s':>10}",
    ]
    for r in rows:
        scores = "".join(f"{r[k]:>8.3f}" for k in ("AP", "AP50", "AP75"))
        lines.append(f"{r['size']:>6}{scores}{r['images_per_s']:>10.1f}")
    return "\n".join(lines)
