"""How each detection and box fared: the matching of detections to ground truth (`match`,
COCOeval's rule) and, on it, the error breakdown of TIDE (`error_breakdown`).

Matching. Inputs are those of `detector.evaluation.coco.coco_metrics`: a pycocotools ground
truth and COCO results dicts (``bbox`` xywh in original image pixels). At each IoU
threshold t, as COCOeval does it:

- per image and class, at most ``max_dets`` (100) detections, best score first (ties: image
  order, then results order, as COCOeval ranks them);
- each detection takes the not-yet-taken box of its class with the highest IoU >= t (ties:
  the later annotation, as COCOeval), so a box is found at most once;
- a detection that takes none but whose own area lies >= t inside a crowd region
  (``iscrowd=1``) of its class is ignored: neither a true nor a false positive. Crowd
  regions are not instances, and a region may cover any number of detections.

Greedy by score, so the detections scoring >= x match exactly as if the others did not
exist: every count "at confidence x" can be read off this one matching.

Error breakdown, after TIDE (Bolya et al., "TIDE: A General Toolbox for Identifying Object
Detection Errors", ECCV 2020), on top of the matching at IoU
t_f = 0.5.

Every false positive (not a true positive, not in a crowd region) gets one type, tested in
this order (the order of the authors' toolbox, so that a detection fitting two types gets
the first):

- Loc: 0.1 <= its best IoU with a box of its own class < 0.5 (found, badly located);
- Cls: IoU >= 0.5 with a box of another class (right box, wrong class);
- Dupe: IoU >= 0.5 with a box of its class that a better-scoring detection took;
- Bkg: IoU < 0.1 with every box of the image (background taken for an object);
- Both: the rest, i.e. 0.1 <= IoU < 0.5 with a box of another class only.

Miss, on the ground-truth side: the boxes that no detection took and that no Cls or Loc
error points at.

The gain of a type is the AP50 once that type alone is fixed, minus the AP50 as it is (the
paper's "oracle"). AP50 is the mean over the classes with ground truth of COCO's
101-point AP at IoU 0.5, COCOeval's AP50 on the same detections. Fixing:

- Cls, Loc: of the Cls and Loc errors pointing at a box nobody took, the best-scoring one
  becomes a true positive of that box, keeping its score (Cls: taking the box's class);
  the other errors of the type are removed (they would be duplicates);
- Both, Dupe, Bkg: those detections are removed;
- Miss: the missed boxes leave the ground truth ("reduce the number of GT").

Two further oracles bound the others: FalsePos removes every false positive (the recall
stays), FalseNeg removes every box not found (the precision stays). A class left without
ground truth by an oracle scores 1 if no detection of it is left, else 0. A gain below 0
(the 101 recall points are coarse) is reported as 0, as in the paper.

Differences from the authors' toolbox (``tidecv``): the matching is COCOeval's (at most 100
detections per image and class, not per image; crowd regions per class; IoU >= 0.5 is a
hit), the background test is IoU < 0.1 (not <= 0.1) and the classes averaged are those
with ground truth before the fix.
"""

from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO

from detector.utils.boxes import box_area, iou_xyxy

MAIN_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL_ERRORS = ("FalsePos", "FalseNeg")
# COCOeval's recall thresholds, built as COCOeval builds them (bit-equal values)
RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)
COCO_IOUS = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class Matches:
    """Detections matched to the ground truth at each IoU threshold (see the module doc).

    D detections in COCOeval's rank order (score descending), G ground-truth boxes, T
    thresholds; boxes xyxy in image pixels; image fields index ``image_ids``.
    """

    names: list[str]  # C class names, in ascending category id order
    image_ids: np.ndarray  # (I,) COCO image ids, ascending
    thresholds: np.ndarray  # (T,) IoU thresholds
    gt_image: np.ndarray  # (G,) int
    gt_cls: np.ndarray  # (G,) int class index
    gt_box: np.ndarray  # (G, 4) float64
    gt_crowd: np.ndarray  # (G,) bool: crowd region, not an instance
    image: np.ndarray  # (D,) int
    cls: np.ndarray  # (D,) int class index
    score: np.ndarray  # (D,) float64
    box: np.ndarray  # (D, 4) float64
    gt: np.ndarray  # (D, T) int: the ground-truth box taken, -1 for none
    ignored: np.ndarray  # (D, T) bool: in a crowd region, neither TP nor FP

    @property
    def tp(self) -> np.ndarray:
        """(D, T) bool: true positive at each threshold."""
        return self.gt >= 0

    def instances(self) -> np.ndarray:
        """(C,) int: ground-truth instances (crowd regions excluded) of each class."""
        return np.bincount(self.gt_cls[~self.gt_crowd], minlength=len(self.names))

    def images(self) -> np.ndarray:
        """(C,) int: images holding at least one instance of each class."""
        n, real = len(self.names), ~self.gt_crowd
        pairs = np.unique(self.gt_image[real] * n + self.gt_cls[real])
        return np.bincount(pairs % n, minlength=n)

    def index_of(self, iou: float) -> int:
        """The index of IoU threshold `iou` in ``thresholds``."""
        hits = np.flatnonzero(np.isclose(self.thresholds, iou))
        if not len(hits):
            raise ValueError(f"matched at IoU {self.thresholds.tolist()}, not at {iou}")
        return int(hits[0])

    def by_image(self, dets: np.ndarray, boxes: np.ndarray):
        """Yields (dets, boxes) of each image holding some of `dets` (detection indices,
        their order kept) with those of `boxes` (ground-truth indices) in the image."""
        boxes_of = groups(self.gt_image, boxes)
        empty = np.zeros(0, np.int64)
        for image, here in groups(self.image, dets).items():
            yield here, boxes_of.get(image, empty)


def match(
    coco_gt: COCO,
    results: list[dict],
    names: list[str] | None = None,
    thresholds=(0.5,),
    max_dets: int = 100,
) -> Matches:
    """Matches `results` to `coco_gt` at each IoU threshold (see the module doc).

    Args:
        coco_gt: COCO. The ground truth; its categories, by ascending id, are the classes.
        results: list of dict. COCO results: image_id, category_id, bbox xywh pixels, score.
        names: list of str. The class names. Defaults to the categories' names.
        thresholds: sequence of float. IoU thresholds, e.g. `COCO_IOUS`. Defaults to (0.5,).
        max_dets: int. Detections kept per image and class (COCOeval's). Defaults to 100.
    """
    image_ids = np.asarray(sorted(coco_gt.getImgIds()), np.int64)
    cat_ids = sorted(coco_gt.getCatIds())
    names = list(names) if names is not None else [coco_gt.cats[c]["name"] for c in cat_ids]
    if len(names) != len(cat_ids):
        raise ValueError(f"names: {len(names)} names for {len(cat_ids)} categories")
    image_of = {int(i): k for k, i in enumerate(image_ids)}
    class_of = {int(c): k for k, c in enumerate(cat_ids)}
    gt = _ground_truth(coco_gt, image_of, class_of)
    image, cls, score, box = _detections(results, image_of, class_of, max_dets)
    thresholds = np.asarray(thresholds, np.float64)
    taken, ignored = _match_groups(gt, image, cls, box, thresholds, len(names))
    return Matches(names, image_ids, thresholds, *gt, image, cls, score, box, taken, ignored)


def _ground_truth(coco_gt: COCO, image_of: dict, class_of: dict) -> tuple:
    """(image, class, xyxy box, crowd) arrays of the annotations, in annotation order."""
    rows = [
        (image_of[a["image_id"]], class_of[a["category_id"]], a["bbox"], bool(a.get("iscrowd")))
        for a in coco_gt.anns.values()
        if a["image_id"] in image_of and a["category_id"] in class_of
    ]
    image = np.asarray([r[0] for r in rows], np.int64)
    cls = np.asarray([r[1] for r in rows], np.int64)
    xywh = np.asarray([r[2] for r in rows], np.float64).reshape(-1, 4)
    crowd = np.asarray([r[3] for r in rows], bool)
    return image, cls, _xyxy(xywh), crowd


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def _detections(results: list[dict], image_of: dict, class_of: dict, max_dets: int) -> tuple:
    """(image, class, score, xyxy box) of the kept detections, in COCOeval's rank order."""
    image, cls = np.zeros(len(results), np.int64), np.zeros(len(results), np.int64)
    for i, r in enumerate(results):
        for key, index, to in (("image_id", image_of, image), ("category_id", class_of, cls)):
            if r.get(key) not in index:
                raise ValueError(f"results[{i}]: {key} {r.get(key)!r} not in the ground truth")
            to[i] = index[r[key]]
    score = np.asarray([r["score"] for r in results], np.float64)
    xywh = np.asarray([r["bbox"] for r in results], np.float64).reshape(-1, 4)
    index = np.arange(len(results))
    order = np.lexsort((index, -score, cls, image))
    group = image[order] * (int(cls.max(initial=0)) + 1) + cls[order]
    first = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    rank = index - np.repeat(first, np.diff(np.r_[first, len(order)]))
    keep = order[rank < max_dets]
    keep = keep[np.lexsort((keep, image[keep], -score[keep]))]
    return image[keep], cls[keep], score[keep], _xyxy(xywh[keep])


def groups(keys: np.ndarray, members: np.ndarray) -> dict[int, np.ndarray]:
    """The `members` (indices, in their order) of each value of ``keys[members]``."""
    if not len(members):
        return {}
    order = np.argsort(keys[members], kind="stable")
    values, first = np.unique(keys[members][order], return_index=True)
    return dict(zip(values.tolist(), np.split(members[order], first[1:]), strict=True))


def _match_groups(gt, image, cls, box, thresholds, num_classes) -> tuple:
    """(D, T) box taken (-1: none) and (D, T) ignored, matching each image and class."""
    gt_image, gt_cls, gt_box, crowd = gt
    gt_key, det_key = gt_image * num_classes + gt_cls, image * num_classes + cls
    real = groups(gt_key, np.flatnonzero(~crowd))
    regions = groups(gt_key, np.flatnonzero(crowd))
    taken = np.full((len(image), len(thresholds)), -1, np.int64)
    ignored = np.zeros(taken.shape, bool)
    empty = np.zeros(0, np.int64)
    for key, dets in groups(det_key, np.arange(len(image))).items():
        boxes, regions_here = real.get(key, empty), regions.get(key, empty)
        cover = crowd_cover(box[dets], gt_box[regions_here])
        column, ignored[dets] = greedy(iou_xyxy(box[dets], gt_box[boxes]), cover, thresholds)
        if len(boxes):
            taken[dets] = np.where(column >= 0, boxes[np.maximum(column, 0)], -1)
    return taken, ignored


def greedy(iou: np.ndarray, cover: np.ndarray, thresholds: np.ndarray) -> tuple:
    """COCOeval's matching of one image and class.

    Args:
        iou: (D, G) IoU of the detections (best score first) with the boxes.
        cover: (D, K) fraction of each detection's area inside each crowd region.
        thresholds: (T,) IoU thresholds.

    Returns:
        (D, T) int column of the box taken (-1: none), (D, T) bool ignored.
    """
    num_dets, num_boxes = iou.shape
    t = np.arange(len(thresholds))
    column = np.full((num_dets, len(thresholds)), -1, np.int64)
    taken = np.zeros((len(thresholds), num_boxes), bool)
    for d in range(num_dets if num_boxes else 0):
        candidate = np.where((iou[d] >= thresholds[:, None]) & ~taken, iou[d], -1.0)
        best = num_boxes - 1 - np.argmax(candidate[:, ::-1], axis=1)  # the last best
        hit = candidate[t, best] >= 0
        column[d] = np.where(hit, best, -1)
        taken[t[hit], best[hit]] = True
    in_crowd = cover.max(axis=1, initial=0.0)[:, None] >= thresholds
    return column, (column < 0) & in_crowd


def crowd_cover(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """(N, K) fraction of each xyxy box's area inside each xyxy region (COCO's crowd IoU)."""
    top_left = np.maximum(boxes[:, None, :2], regions[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], regions[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area = box_area(boxes)[:, None]
    return np.where(area > 0, inter / np.where(area > 0, area, 1), 0.0)


def coco_ap(tp: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point interpolated AP of ranked detections, as COCOeval computes it.

    Args:
        tp: (N,) bool. True positive, best score first.
        num_gt: int. The instances; with none, 1.0 if there is no detection, else 0.0.
    """
    if num_gt <= 0:
        return 0.0 if len(tp) else 1.0
    if not len(tp):
        return 0.0
    hits = np.cumsum(tp, dtype=np.float64)
    misses = np.cumsum(~np.asarray(tp, bool), dtype=np.float64)
    recall = hits / num_gt
    precision = hits / (hits + misses + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    inside = index < len(precision)
    return float(np.where(inside, precision[np.minimum(index, len(tp) - 1)], 0.0).mean())


def classify(m: Matches, fg: float = 0.5, bg: float = 0.1) -> dict:
    """The error type of each detection and box (see the module doc).

    Returns:
        {"type": (D,) str, "" for a true positive or an ignored detection;
         "target": (D,) int, the box a Cls or Loc error points at, else -1;
         "taken": (G,) bool, boxes a detection took; "missed": (G,) bool}.
    """
    k = m.index_of(fg)
    taken = np.zeros(len(m.gt_cls), bool)
    taken[m.gt[m.tp[:, k], k]] = True
    kind = np.full(len(m.cls), "", "<U4")
    target = np.full(len(m.cls), -1, np.int64)
    false = np.flatnonzero(~m.tp[:, k] & ~m.ignored[:, k])
    for dets, boxes in m.by_image(false, np.flatnonzero(~m.gt_crowd)):
        kind[dets], target[dets] = _classify_image(m, dets, boxes, taken, fg, bg)
    points = ((kind == "Cls") | (kind == "Loc")) & (target >= 0)
    usable = np.zeros(len(m.gt_cls), bool)
    usable[target[points]] = True
    return {
        "type": kind,
        "target": target,
        "taken": taken,
        "missed": ~m.gt_crowd & ~taken & ~usable,
    }


def _classify_image(m: Matches, dets, boxes, taken, fg: float, bg: float) -> tuple:
    """(types, targets) of the false positives `dets` of one image with its `boxes`."""
    if not len(boxes):
        return "Bkg", -1
    iou = iou_xyxy(m.box[dets], m.gt_box[boxes])
    same = m.cls[dets][:, None] == m.gt_cls[boxes][None, :]
    own, other = np.where(same, iou, 0.0), np.where(same, 0.0, iou)
    best_own = own.max(axis=1)
    kind = np.select(
        [
            (best_own >= bg) & (best_own < fg),
            other.max(axis=1) >= fg,
            np.where(taken[boxes], own, 0.0).max(axis=1) >= fg,
            iou.max(axis=1) < bg,
        ],
        ["Loc", "Cls", "Dupe", "Bkg"],
        "Both",
    )
    target = np.select(
        [kind == "Loc", kind == "Cls"], [boxes[own.argmax(axis=1)], boxes[other.argmax(axis=1)]], -1
    )
    return kind, target


def error_breakdown(m: Matches, fg: float = 0.5, bg: float = 0.1) -> dict:
    """Counts and AP50 gains of each error type (see the module doc).

    Returns:
        {"AP50": float, the AP50 as it is; "counts": {type: int} of `MAIN_ERRORS`;
         "gains": {type: float} of `MAIN_ERRORS` + `SPECIAL_ERRORS`, in AP50 (0..1)}.
    """
    errors = classify(m, fg, bg)
    kind, target, taken = errors["type"], errors["target"], errors["taken"]
    tp = m.tp[:, m.index_of(fg)]
    live = tp | (kind != "")
    instances = m.instances()
    has = instances > 0
    base = _mean_ap(m.cls[live], tp[live], instances, has)
    claims = np.flatnonzero(((kind == "Cls") | (kind == "Loc")) & (target >= 0))
    claims = claims[~taken[target[claims]]]
    claimant = np.zeros(len(kind), bool)
    claimant[claims[np.unique(target[claims], return_index=True)[1]]] = True
    gains = {}
    for name in MAIN_ERRORS + SPECIAL_ERRORS:
        cls, hit, keep, num_gt = m.cls.copy(), tp.copy(), live.copy(), instances.copy()
        if name in ("Cls", "Loc"):
            fixed = (kind == name) & claimant
            hit |= fixed
            cls[fixed] = m.gt_cls[target[fixed]]
            keep &= ~((kind == name) & ~claimant)
        elif name == "Miss":
            num_gt -= np.bincount(m.gt_cls[errors["missed"]], minlength=len(instances))
        elif name == "FalsePos":
            keep &= tp
        elif name == "FalseNeg":
            num_gt = np.bincount(m.cls[tp], minlength=len(instances))
        else:
            keep &= kind != name
        gains[name] = max(_mean_ap(cls[keep], hit[keep], num_gt, has) - base, 0.0)
    counts = {name: int((kind == name).sum()) for name in MAIN_ERRORS[:-1]}
    counts["Miss"] = int(errors["missed"].sum())
    return {"AP50": base, "counts": counts, "gains": gains}


def _mean_ap(cls: np.ndarray, tp: np.ndarray, num_gt: np.ndarray, has: np.ndarray) -> float:
    """Mean `coco_ap` over the classes `has` (C,) bool of ranked detections (cls, tp)."""
    classes = np.flatnonzero(has)
    if not len(classes):
        return 0.0
    order = np.argsort(cls, kind="stable")
    start = np.searchsorted(cls[order], classes, side="left")
    end = np.searchsorted(cls[order], classes, side="right")
    aps = [coco_ap(tp[order[a:b]], num_gt[c]) for c, a, b in zip(classes, start, end, strict=True)]
    return float(np.mean(aps))


def format_errors(errors: dict) -> str:
    """`error_breakdown`'s dict as printed: counts and gains in AP50 points (x100)."""
    names = MAIN_ERRORS + SPECIAL_ERRORS
    counts = [str(errors["counts"].get(n, "")) for n in names]
    gains = [f"{100 * errors['gains'][n]:.2f}" for n in names]
    return "\n".join(
        [
            f"Error breakdown (TIDE, IoU 0.5, AP50 {errors['AP50']:.3f}): "
            "AP50 points gained by fixing each type",
            f"{'type':>8}" + "".join(f"{n:>10}" for n in names),
            f"{'count':>8}" + "".join(f"{c:>10}" for c in counts),
            f"{'dAP50':>8}" + "".join(f"{g:>10}" for g in gains),
        ]
    )
