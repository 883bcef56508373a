"""COCOeval's per-image matching run on chunks of images while the model predicts the next.

pycocotools' ``COCOeval.evaluate`` matches detections to ground truth one (image,
category, area range) at a time, in Python; ``accumulate`` then needs all of them. The
matching of an image depends on that image alone, so it can start as soon as the image's
detections exist: `StreamingCocoEval` runs it for each chunk of images in a worker thread
(the model's forward pass releases the GIL, so the two overlap on a multi-core CPU) and
finally runs ``accumulate`` / ``summarize`` once over the per-image results laid out
exactly as a single ``evaluate`` over all images would lay them out. The numbers are
identical to one ``COCOeval`` call on all results (tested).
"""

import contextlib
import copy
import io
from concurrent.futures import Future, ThreadPoolExecutor

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def _detections(coco_gt: COCO, results: list[dict]) -> COCO:
    """``coco_gt.loadRes(results)``, also for an empty list (which loadRes rejects)."""
    if results:
        return coco_gt.loadRes(results)
    empty = COCO()
    empty.dataset = {
        "images": coco_gt.dataset["images"],
        "categories": coco_gt.dataset["categories"],
        "annotations": [],
    }
    empty.createIndex()
    return empty


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

    def _match(self, results: list[dict], image_ids: list[int]) -> dict:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(self.coco_gt, _detections(self.coco_gt, results), "bbox")
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
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(self.coco_gt, _detections(self.coco_gt, []), "bbox")
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
