"""The validation report of a COCO results list: the per-class table, P / R / F1 against
confidence, the confusion matrix, VOC mAP@0.5 and the TIDE error breakdown, with pictures
(`detector.evaluation.plots`). `write_report` computes it all; `format_report` prints it.

Inputs are those of `detector.evaluation.coco.coco_metrics`: a pycocotools ground truth and COCO
results dicts (``bbox`` xywh in original image pixels). AP and AP50 come from COCOeval, so
the table agrees with the COCO numbers; everything else is read off one matching of the
detections to the ground truth at IoU 0.5, made the way COCOeval makes it
(`detector.evaluation.tide.match`).
"""

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.evaluation import plots as report_plots
from detector.evaluation import tide
from detector.evaluation.tide import Matches, greedy, match
from detector.utils.boxes import box_area, iou_xyxy
from detector.utils.quiet import quiet_stdout

CONF_GRID = np.arange(1001) / 1000  # the confidences of the F1/P/R curves


def coco_per_class(coco_gt: COCO, results: list[dict], has_gt: np.ndarray) -> dict:
    """COCOeval's per-class numbers (area all, 100 detections), NaN for a class without
    ground truth (`has_gt` (C,) bool): {"AP", "AP50": (C,), "recall": (101,),
    "precision50": (C, 101) COCOeval's interpolated precision at IoU 0.5}."""
    if not results:
        zero, recall = np.where(has_gt, 0.0, np.nan), np.linspace(0.0, 1.0, 101)
        return {
            "AP": zero,
            "AP50": zero,
            "recall": recall,
            "precision50": np.zeros((len(zero), 101)),
        }
    with quiet_stdout():
        evaluator = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    valid = (precision > -1).all(axis=(0, 1))
    return {
        "AP": np.where(valid, precision.mean(axis=(0, 1)), np.nan),
        "AP50": np.where(valid, precision[0].mean(axis=0), np.nan),
        "recall": np.asarray(evaluator.params.recThrs),
        "precision50": np.clip(precision[0].T, 0, None),
    }


def pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) IoU of each xyxy box of a (N, 4) with the same row of b (N, 4)."""
    inter = np.concatenate([np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])], 1)
    inter = box_area(inter)
    return inter / np.maximum(box_area(a) + box_area(b) - inter, 1e-12)


def confidence_curves(m: Matches) -> dict:
    """Precision, recall and F1 at IoU 0.5 of each class at every confidence x of
    `CONF_GRID`, counting the detections that score >= x: {"P", "R", "F1": (C, X)}.

    P is 0 where no detection scores >= x; R and F1 are NaN for a class without ground
    truth. F1 = 2 TP / (detections + instances), the harmonic mean of P and R."""
    k = m.index_of(0.5)
    tp, counted = m.tp[:, k], ~m.ignored[:, k]
    tp_at = _count_at_least(m.score[tp], m.cls[tp], len(m.names))
    det_at = _count_at_least(m.score[counted], m.cls[counted], len(m.names))
    instances = m.instances()[:, None].astype(np.float64)
    has = instances > 0
    return {
        "P": tp_at / np.maximum(det_at, 1),
        "R": np.where(has, tp_at / np.maximum(instances, 1), np.nan),
        "F1": np.where(has, 2 * tp_at / np.maximum(det_at + instances, 1), np.nan),
    }


def _count_at_least(scores: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, X) int: how many `scores` of each class are >= each `CONF_GRID` value."""
    bins = np.searchsorted(CONF_GRID, scores, side="right") - 1
    ok = bins >= 0
    size = len(CONF_GRID)
    hist = np.bincount(classes[ok] * size + bins[ok], minlength=num_classes * size)
    return np.cumsum(hist.reshape(num_classes, size)[:, ::-1], axis=1)[:, ::-1]


def class_mean(values: np.ndarray, has_gt: np.ndarray) -> np.ndarray:
    """(X,) mean over the classes with ground truth of (C, X) values; 0 if none has any."""
    return values[has_gt].mean(axis=0) if has_gt.any() else np.zeros(values.shape[1])


def per_class_table(m: Matches, coco: dict, curves: dict, conf: float = 0.25) -> dict:
    """The rows `class images instances P R AP50 AP TP FP FN IoU`, the `all` row first.

    P and R: at ``best_f1_conf``, the highest confidence of `CONF_GRID` with the best
    class-mean F1. AP50, AP: COCOeval's (`coco`, from `coco_per_class`). TP, FP, FN and
    the mean IoU of the true positives: at IoU 0.5, detections scoring >= `conf`. The `all`
    row averages P, R, AP50 and AP over the classes with ground truth and sums the counts;
    its images are all the images. A class without ground truth has R, AP50, AP None."""
    k, has = m.index_of(0.5), m.instances() > 0
    mean_f1 = class_mean(curves["F1"], has)
    best = int(np.flatnonzero(mean_f1 >= mean_f1.max() - 1e-12)[-1])
    scored = m.score >= conf
    tp = scored & m.tp[:, k]
    fp = scored & ~m.tp[:, k] & ~m.ignored[:, k]
    n = len(m.names)
    columns = {
        "images": m.images(),
        "instances": m.instances(),
        "P": curves["P"][:, best],
        "R": curves["R"][:, best],
        "AP50": coco["AP50"],
        "AP": coco["AP"],
        "TP": np.bincount(m.cls[tp], minlength=n),
        "FP": np.bincount(m.cls[fp], minlength=n),
        "IoU_sum": np.bincount(m.cls[tp], pair_iou(m.box[tp], m.gt_box[m.gt[tp, k]]), n),
    }
    columns["FN"] = columns["instances"] - columns["TP"]
    rows = [_row("all", columns, has, images=len(m.image_ids))]
    rows += [_row(name, columns, np.arange(n) == c) for c, name in enumerate(m.names)]
    return {
        "conf": float(conf),
        "best_f1_conf": float(CONF_GRID[best]),
        "best_f1": float(mean_f1[best]),
        "rows": rows,
    }


def _row(name: str, columns: dict, pick: np.ndarray, images: int | None = None) -> dict:
    """One table row: means of P, R, AP50, AP over `pick` (C,) bool, sums of the counts."""
    row = {"class": name}
    row["images"] = int(images if images is not None else columns["images"][pick].sum())
    for key in ("instances", "TP", "FP", "FN"):
        row[key] = int(columns[key][pick].sum())
    for key in ("P", "R", "AP50", "AP"):
        values = columns[key][pick]
        row[key] = _number(values.mean()) if len(values) and not np.isnan(values).any() else None
    row["IoU"] = _number(columns["IoU_sum"][pick].sum() / row["TP"]) if row["TP"] else None
    return row


def _number(x) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def format_table(table: dict) -> str:
    """The table as printed (`per_class_table`'s dict, or `write_report`'s)."""
    head = ("class", "images", "instances", "P", "R", "AP50", "AP", "TP", "FP", "FN", "IoU")
    width = max(12, *(len(r["class"]) for r in table["rows"]))
    lines = [
        f"P, R at conf {table['best_f1_conf']:.3f} (best mean F1 {table['best_f1']:.3f}); "
        f"TP, FP, FN, mean IoU of TPs at conf {table['conf']:.3f}; IoU threshold 0.5",
        f"{head[0]:>{width}}" + "".join(f"{h:>10}" for h in head[1:]),
    ]
    for row in table["rows"]:
        cells = [f"{row[h]:>10d}" for h in ("images", "instances")]
        cells += [_cell(row[h], ".3f") for h in ("P", "R", "AP50", "AP")]
        cells += [f"{row[h]:>10d}" for h in ("TP", "FP", "FN")] + [_cell(row["IoU"], ".3f")]
        lines.append(f"{row['class']:>{width}}" + "".join(cells))
    return "\n".join(lines)


def _cell(value: float | None, spec: str) -> str:
    return f"{'-':>10}" if value is None else f"{value:>10{spec}}"


def confusion_matrix(m: Matches, conf: float = 0.25, iou: float = 0.5) -> np.ndarray:
    """(C + 1, C + 1) int counts of the detections scoring >= `conf` at IoU `iou`.

    Rows: the true class, the last row background (false positives); columns: the
    predicted class, the last column background (missed boxes). The diagonal holds the
    true positives of the matching; then the other detections, best score first, each
    take the left-over box of any class with the highest IoU >= `iou` (a confusion).
    Detections in a crowd region of their class are left out. A row sums to the class's
    instances; a column, less its background row, to the class's TP + FP."""
    k, n = m.index_of(iou), len(m.names)
    counts = np.zeros((n + 1, n + 1), np.int64)
    live = (m.score >= conf) & ~m.ignored[:, k]
    tp = live & m.tp[:, k]
    np.add.at(counts, (m.cls[tp], m.cls[tp]), 1)
    found = np.zeros(len(m.gt_cls), bool)
    found[m.gt[tp, k]] = True
    dets, boxes = np.flatnonzero(live & ~tp), np.flatnonzero(~found & ~m.gt_crowd)
    paired_dets, paired_boxes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for here, there in m.by_image(dets, boxes):
        column, _ = greedy(
            iou_xyxy(m.box[here], m.gt_box[there]), np.zeros((len(here), 0)), np.array([iou])
        )
        hit = column[:, 0] >= 0
        paired_dets.append(here[hit])
        paired_boxes.append(there[column[hit, 0]])
    paired_dets, paired_boxes = np.concatenate(paired_dets), np.concatenate(paired_boxes)
    np.add.at(counts, (m.gt_cls[paired_boxes], m.cls[paired_dets]), 1)
    np.add.at(counts, (n, m.cls[np.setdiff1d(dets, paired_dets)]), 1)
    np.add.at(counts, (m.gt_cls[np.setdiff1d(boxes, paired_boxes)], n), 1)
    return counts


def voc_ap(tp: np.ndarray, num_gt: int) -> float:
    """All-point interpolated AP (PASCAL VOC2010+ devkit, darknet ``detector map``): the
    area under the precision envelope of the ranked detections. tp: (N,) bool, best score
    first; num_gt: the instances. NaN if there are none."""
    if num_gt <= 0:
        return float("nan")
    hits = np.cumsum(tp, dtype=np.float64)
    recall = np.concatenate([[0.0], hits / num_gt, [1.0]])
    precision = np.concatenate([[0.0], hits / np.arange(1, len(tp) + 1), [0.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    step = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[step + 1] - recall[step]) * envelope[step + 1]))


def voc_map(m: Matches, iou: float = 0.5) -> dict:
    """VOC AP at IoU `iou` of each class, NaN without ground truth (C,), and their mean
    over the classes with ground truth: {"AP50": (C,), "mAP50": float}. Detections in a
    crowd region count as VOC's "difficult" ones: not at all. The matching is COCOeval's
    (IoU >= 0.5, best box not yet taken); the devkit's (IoU > 0.5, best box, a duplicate if
    taken) differs only where boxes of a class overlap each other or IoU is exactly 0.5."""
    k, instances = m.index_of(iou), m.instances()
    counted = ~m.ignored[:, k]
    ap = np.array(
        [voc_ap(m.tp[counted & (m.cls == c), k], instances[c]) for c in range(len(m.names))]
    )
    has = instances > 0
    return {"AP50": ap, "mAP50": float(ap[has].mean()) if has.any() else float("nan")}


def write_report(
    coco_gt: COCO, results: list[dict], names: list[str] | None, out_dir: str, conf: float = 0.25
) -> dict:
    """Computes the report of `results` against `coco_gt` and writes its pictures
    (`report_plots.PICTURES`) into `out_dir`.

    Args:
        coco_gt: COCO. The ground truth (`detector.data.coco.ground_truth`).
        results: list of dict. COCO results, ``bbox`` xywh in original image pixels.
        names: list of str or None. Class names by ascending category id. Defaults to the
            categories' names.
        out_dir: str. Folder of the pictures, created if needed.
        conf: float. Confidence of the TP / FP / FN counts and the confusion matrix.
            Defaults to 0.25.

    Returns:
        JSON-able dict: `per_class_table`'s keys (``rows``, ``conf``, ``best_f1_conf``,
        ``best_f1``), ``voc_map50`` and ``voc_ap50`` (per class; None without ground
        truth), ``errors`` (`detector.evaluation.tide.error_breakdown`), ``confusion`` (``labels``,
        ``counts``) and ``files`` (the pictures' names).
    """
    m = match(coco_gt, results, names)
    has = m.instances() > 0
    coco = coco_per_class(coco_gt, results, has)
    curves = confidence_curves(m)
    table = per_class_table(m, coco, curves, conf)
    counts = confusion_matrix(m, conf)
    voc = voc_map(m)
    errors = tide.error_breakdown(m)
    labels = [*m.names, "background"]
    means = {key: class_mean(curves[key], has) for key in curves}
    report_plots.plot_report(
        out_dir, m.names, CONF_GRID, curves, means, coco, counts, errors, table
    )
    return {
        **table,
        "voc_map50": _number(voc["mAP50"]),
        "voc_ap50": {name: _number(ap) for name, ap in zip(m.names, voc["AP50"], strict=True)},
        "errors": errors,
        "confusion": {"labels": labels, "counts": counts.tolist()},
        "files": list(report_plots.PICTURES),
    }


def format_report(report: dict) -> str:
    """`write_report`'s dict as printed: the table, VOC mAP@0.5 and the error breakdown."""
    voc = report["voc_map50"]
    voc_line = f"VOC mAP@0.5 (all-point interpolation): {'-' if voc is None else f'{voc:.3f}'}"
    return "\n\n".join([format_table(report), voc_line, tide.format_errors(report["errors"])])
