"""COCOeval's per-image matching run on chunks of images while the model predicts the next.

pycocotools' ``COCOeval.evaluate`` matches detections to ground truth one (image,
category, area range) at a time, in Python; ``accumulate`` then needs all of them. The
matching of an image depends on that image alone, so it can start as soon as the image's
detections exist: `StreamingCocoEval` runs it for each chunk of images in a worker thread
(the model's forward pass releases the GIL, so the two overlap on a multi-core CPU) and
finally runs ``accumulate`` / ``summarize`` once over the per-image results laid out
exactly as a single ``evaluate`` over all images would lay them out. The numbers are
identical to one ``COCOeval`` call on all results (tested).

The per-image matching is `FastCocoEval`'s: pycocotools' greedy matching, visiting only the
detections that overlap some ground truth enough to match at each IoU threshold (the
others can change nothing), so that an image's dozens of stray low-score boxes cost one
array comparison instead of a Python loop each.

Detections given as arrays (`add_detections`, a `detector.inference.results.CocoDetections`) become
pycocotools' annotation dicts in the worker thread too, so the thread that runs the model
builds no dict per detection.
"""

import copy
import datetime
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.inference.results import CocoDetections
from detector.utils.quiet import quiet_stdout


def _detections(coco_gt: COCO, results: list[dict]) -> COCO:
    """``coco_gt.loadRes(results)``, also for an empty list (which loadRes rejects)."""
    if results:
        return coco_gt.loadRes(results)
    return _annotated(coco_gt, [])


def _annotated(coco_gt: COCO, annotations: list[dict]) -> COCO:
    """A results COCO over `coco_gt`'s images and categories holding `annotations`
    (dicts as ``loadRes`` completes them: area, id, iscrowd)."""
    out = COCO()
    out.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": coco_gt.dataset["categories"],
        "annotations": annotations,
    }
    out.createIndex()
    return out


class FastCocoEval(COCOeval):
    """pycocotools' COCOeval with the same per-image results (``evalImgs``), computed
    faster: ``evaluateImg`` runs the greedy matching loop of cocoapi's (BSD licence)
    over the detections that reach the IoU threshold with some ground truth only. A
    detection below it with every ground truth leaves the loop with no match and changes
    no state, so skipping it gives the same matches, bit for bit (tested on cocoapi's
    reference results)."""

    def evaluateImg(self, imgId, catId, aRng, maxDet):  # noqa: N802, N803 (cocoapi's names)
        p = self.params
        gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        if not p.useCats or (not gt and not dt):
            return super().evaluateImg(imgId, catId, aRng, maxDet)
        for g in gt:
            g["_ignore"] = int(bool(g["ignore"] or g["area"] < aRng[0] or g["area"] > aRng[1]))
        gtind = np.argsort([g["_ignore"] for g in gt], kind="mergesort")
        gt = [gt[i] for i in gtind]
        dtind = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in dtind[0:maxDet]]
        ious = self.ious[imgId, catId]
        ious = ious[:, gtind] if len(ious) > 0 else ious
        thresholds, g_count, d_count = p.iouThrs, len(gt), len(dt)
        gtm, dtm = np.zeros((len(thresholds), g_count)), np.zeros((len(thresholds), d_count))
        gt_ignore = np.array([g["_ignore"] for g in gt])
        dt_ignore = np.zeros((len(thresholds), d_count))
        if len(ious) != 0:
            _match(ious[:d_count], thresholds, gt, dt, gtm, dtm, gt_ignore, dt_ignore)
        areas = np.array([d["area"] for d in dt], np.float64).reshape(1, d_count)
        outside = (areas < aRng[0]) | (areas > aRng[1])
        dt_ignore = np.logical_or(dt_ignore, np.logical_and(dtm == 0, outside))
        return {
            "image_id": imgId,
            "category_id": catId,
            "aRng": aRng,
            "maxDet": maxDet,
            "dtIds": [d["id"] for d in dt],
            "gtIds": [g["id"] for g in gt],
            "dtMatches": dtm,
            "gtMatches": gtm,
            "dtScores": [d["score"] for d in dt],
            "gtIgnore": gt_ignore,
            "dtIgnore": dt_ignore,
        }

    def accumulate(self, p=None):
        """cocoapi's ``accumulate`` (same ``eval``), its per-detection loop (the running
        maximum of precision from the lowest score up) done by numpy."""
        p = p or self.params
        p.catIds = p.catIds if p.useCats == 1 else [-1]
        counts = [len(p.iouThrs), len(p.recThrs), len(p.catIds), len(p.areaRng), len(p.maxDets)]
        T, R, K, A, M = counts
        precision, scores = -np.ones((T, R, K, A, M)), -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        pe = self._paramsEval
        set_k, set_a = set(pe.catIds if pe.useCats else [-1]), set(map(tuple, pe.areaRng))
        set_m, set_i = set(pe.maxDets), set(pe.imgIds)
        k_list = [n for n, k in enumerate(p.catIds) if k in set_k]
        m_list = [m for m in p.maxDets if m in set_m]
        a_list = [n for n, a in enumerate(map(tuple, p.areaRng)) if a in set_a]
        i_list = [n for n, i in enumerate(p.imgIds) if i in set_i]
        images, areas = len(pe.imgIds), len(pe.areaRng)
        for k, k0 in enumerate(k_list):
            for a, a0 in enumerate(a_list):
                offset = k0 * areas * images + a0 * images
                found = [self.evalImgs[offset + i] for i in i_list]
                found = [e for e in found if e is not None]
                for m, max_det in enumerate(m_list):
                    out = _curves(found, max_det, p.recThrs) if found else None
                    if out is not None:
                        precision[:, :, k, a, m], recall[:, k, a, m], scores[:, :, k, a, m] = out
        date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.eval = {"params": p, "counts": counts, "date": date, "precision": precision}
        self.eval.update(recall=recall, scores=scores)


def _curves(found: list[dict], max_det: int, rec_thrs) -> tuple | None:
    """precision (T, R), recall (T,), scores (T, R) of one (category, area, max_det)
    from its per-image results, as cocoapi's accumulate computes them; None when the
    category has no ground truth there."""
    dt_scores = np.concatenate([e["dtScores"][0:max_det] for e in found])
    inds = np.argsort(-dt_scores, kind="mergesort")
    sorted_scores = dt_scores[inds]
    dtm = np.concatenate([e["dtMatches"][:, 0:max_det] for e in found], axis=1)[:, inds]
    dt_ig = np.concatenate([e["dtIgnore"][:, 0:max_det] for e in found], axis=1)[:, inds]
    gt_ig = np.concatenate([e["gtIgnore"] for e in found])
    npig = np.count_nonzero(gt_ig == 0)
    if npig == 0:
        return None
    tp_sum = np.cumsum(np.logical_and(dtm, np.logical_not(dt_ig)), axis=1).astype(float)
    fp_sum = np.cumsum(np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig)), axis=1)
    fp_sum = fp_sum.astype(float)
    R, nd = len(rec_thrs), tp_sum.shape[1]
    precision, scores = np.zeros((len(tp_sum), R)), np.zeros((len(tp_sum), R))
    recall = tp_sum[:, -1] / npig if nd else np.zeros(len(tp_sum))
    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum, strict=True)):
        rc = tp / npig
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # cocoapi's loop: pr[i-1] = max(pr[i-1], pr[i])
        at = np.searchsorted(rc, rec_thrs, side="left")
        at = at[at < nd]  # cocoapi stops at the first recall it never reaches
        precision[t, : len(at)], scores[t, : len(at)] = pr[at], sorted_scores[at]
    return precision, recall, scores


def _match(ious, thresholds, gt, dt, gtm, dtm, gt_ignore, dt_ignore) -> None:
    """cocoapi's greedy matching (fills gtm, dtm, dt_ignore (T, ...) in place), over the
    detections whose best IoU reaches each threshold, in score order."""
    reach = ious.max(axis=1)
    crowd = [int(g["iscrowd"]) for g in gt]
    ignored = gt_ignore.tolist()
    for tind, t in enumerate(thresholds):
        start = min([t, 1 - 1e-10])
        for dind in np.nonzero(reach >= start)[0].tolist():
            row, iou, m = ious[dind].tolist(), start, -1
            for gind in range(len(gt)):
                if gtm[tind, gind] > 0 and not crowd[gind]:
                    continue
                if m > -1 and ignored[m] == 0 and ignored[gind] == 1:
                    break
                if row[gind] < iou:
                    continue
                iou, m = row[gind], gind
            if m == -1:
                continue
            dt_ignore[tind, dind] = ignored[m]
            dtm[tind, dind] = gt[m]["id"]
            gtm[tind, m] = dt[dind]["id"]


class StreamingCocoEval:
    """Feed (results, image ids) chunk by chunk with `add`; `finish` returns the COCOeval
    whose ``stats`` and ``eval`` are those of one evaluation of everything."""

    def __init__(self, coco_gt: COCO):
        self.coco_gt = coco_gt
        self.pool = ThreadPoolExecutor(1)
        self.futures: list[Future] = []
        self.image_ids: list[int] = []

    def add(self, results: list[dict], image_ids: list[int]) -> None:
        """Queues the per-image matching of `image_ids`, whose detections are `results`."""
        self.image_ids += list(image_ids)
        self.futures.append(self.pool.submit(self._match, list(results), list(image_ids)))

    def add_detections(self, detections: CocoDetections, image_ids: list[int]) -> None:
        """`add` for detections given as arrays (the same numbers as their `to_results`)."""
        self.image_ids += list(image_ids)
        self.futures.append(self.pool.submit(self._match, detections, list(image_ids)))

    def _match(self, results: list[dict] | CocoDetections, image_ids: list[int]) -> dict:
        with quiet_stdout():
            if isinstance(results, CocoDetections):
                found = _annotated(self.coco_gt, results.to_annotations())
            else:
                found = _detections(self.coco_gt, results)
            evaluator = FastCocoEval(self.coco_gt, found, "bbox")
            evaluator.params.imgIds = sorted(set(image_ids))
            evaluator.evaluate()
        p = evaluator.params
        keyed = {}
        for k, cat in enumerate(p.catIds):
            for a in range(len(p.areaRng)):
                for i, image in enumerate(p.imgIds):
                    offset = k * len(p.areaRng) * len(p.imgIds) + a * len(p.imgIds) + i
                    keyed[(cat, a, image)] = evaluator.evalImgs[offset]
        return keyed

    def finish(self) -> COCOeval:
        """Waits for the matching, then accumulates and summarizes over every image."""
        keyed = {}
        for future in self.futures:
            keyed.update(future.result())
        self.pool.shutdown()
        with quiet_stdout():
            evaluator = FastCocoEval(self.coco_gt, _detections(self.coco_gt, []), "bbox")
            p = evaluator.params
            p.imgIds = sorted(set(self.image_ids))
            evaluator.evalImgs = [
                keyed[(cat, a, image)]
                for cat in p.catIds
                for a in range(len(p.areaRng))
                for image in p.imgIds
            ]
            evaluator._paramsEval = copy.deepcopy(p)
            evaluator.accumulate()
            evaluator.summarize()
        return evaluator
