"""The validation report (`detector.evaluation.report`, `detector.evaluation.tide`) on hand-made
ground truth and detections whose every number is worked out by hand in the comments."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.evaluation import report, tide
from detector.evaluation.coco import coco_metrics
from detector.evaluation.plots import PICTURES, plot_speed_accuracy

A, B = 1, 2  # category ids of classes "a" and "b"


def coco_of(annotations: list[dict], images: int = 2) -> COCO:
    """An in-memory ground truth of `images` 100x100 images (ids 1..), classes a and b."""
    coco = COCO()
    coco.dataset = {
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100}
            for i in range(1, images + 1)
        ],
        "categories": [{"id": A, "name": "a"}, {"id": B, "name": "b"}],
        "annotations": [{**a, "id": k + 1} for k, a in enumerate(annotations)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def box(image: int, cat: int, xywh, crowd: int = 0) -> dict:
    area = xywh[2] * xywh[3]
    return {
        "image_id": image,
        "category_id": cat,
        "bbox": list(xywh),
        "iscrowd": crowd,
        "area": area,
    }


def det(image: int, cat: int, xywh, score: float) -> dict:
    return {"image_id": image, "category_id": cat, "bbox": list(xywh), "score": score}


def operating_point_case() -> tuple[COCO, list[dict]]:
    """Class a: 4 boxes in image 1; detections .9 TP (IoU 1), .8 TP (IoU 0.6), .7 FP, .6 TP
    (IoU 1), .3 FP; the box at x=60 is missed. Class b: 1 box in image 2, found at .5."""
    gt = [box(1, A, (x, 0, 10, 10)) for x in (0, 20, 40, 60)] + [box(2, B, (0, 80, 10, 10))]
    dets = [
        det(1, A, (0, 0, 10, 10), 0.9),
        det(1, A, (20, 0, 10, 6), 0.8),  # 60 / 100 of the box at x=20
        det(1, A, (0, 50, 10, 10), 0.7),
        det(1, A, (40, 0, 10, 10), 0.6),
        det(1, A, (20, 50, 10, 10), 0.3),
        det(2, B, (0, 80, 10, 10), 0.5),
    ]
    return coco_of(gt), dets


def test_each_box_is_taken_once_and_crowd_regions_are_neither_hit_nor_miss():
    gt = [
        box(1, A, (0, 0, 10, 10)),
        box(1, A, (50, 50, 40, 40), crowd=1),
        box(2, B, (0, 0, 10, 10)),  # class b: found by nothing
    ]
    dets = [
        det(1, A, (0, 0, 10, 10), 0.9),  # takes the box
        det(1, A, (1, 0, 10, 10), 0.8),  # IoU 90 / 110 with the taken box: a false positive
        det(1, A, (60, 60, 10, 10), 0.7),  # inside the crowd region: ignored
        det(1, B, (60, 60, 10, 10), 0.65),  # class b has no crowd region here: false positive
        det(2, A, (30, 30, 10, 10), 0.6),  # image 2 has no box of class a: false positive
    ]
    m = tide.match(coco_of(gt), dets)
    assert m.score.tolist() == [0.9, 0.8, 0.7, 0.65, 0.6]
    assert m.tp[:, 0].tolist() == [True, False, False, False, False]
    assert m.ignored[:, 0].tolist() == [False, False, True, False, False]
    assert m.gt[0, 0] == 0 and m.gt_crowd.tolist() == [False, True, False]
    assert m.instances().tolist() == [1, 1] and m.images().tolist() == [1, 1]


def test_no_detections_at_all():
    m = tide.match(coco_of([box(1, A, (0, 0, 10, 10))]), [])
    assert m.tp.shape == (0, 1) and m.instances().tolist() == [1, 0]


def test_results_of_unknown_images_or_categories_are_refused():
    coco = coco_of([box(1, A, (0, 0, 10, 10))])
    with pytest.raises(ValueError, match=r"results\[0\]: image_id 9"):
        tide.match(coco, [det(9, A, (0, 0, 1, 1), 0.5)])
    with pytest.raises(ValueError, match=r"results\[1\]: category_id 7"):
        tide.match(coco, [det(1, A, (0, 0, 1, 1), 0.5), det(1, 7, (0, 0, 1, 1), 0.5)])


def random_case(seed: int = 0) -> tuple[COCO, list[dict]]:
    """Jittered copies, misclassified copies, background boxes and crowd regions; image 1
    holds 120 detections of one class (COCOeval keeps the best 100)."""
    rng = np.random.default_rng(seed)
    gt, dets = [], []
    for image in range(1, 9):
        for _ in range(rng.integers(0, 6)):
            xy, wh = rng.uniform(0, 60, 2), rng.uniform(5, 40, 2)
            cat = int(rng.choice([A, B]))
            gt.append(box(image, cat, (*xy, *wh), crowd=int(rng.random() < 0.15)))
            for _ in range(rng.integers(0, 3)):
                jitter = (*(xy + rng.normal(0, 4, 2)), *(wh * rng.uniform(0.7, 1.3, 2)))
                cat = cat if rng.random() < 0.8 else A + B - cat
                dets.append(det(image, cat, jitter, float(rng.random())))
        for _ in range(rng.integers(0, 4)):
            xywh = (*rng.uniform(0, 80, 2), *rng.uniform(3, 20, 2))
            dets.append(det(image, int(rng.choice([A, B])), xywh, float(rng.random())))
    dets += [det(1, A, (*rng.uniform(0, 60, 2), 30, 30), float(rng.random())) for _ in range(120)]
    return coco_of(gt, images=9), dets


def test_matching_reproduces_cocoeval_at_every_iou_threshold():
    coco, dets = random_case()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes([dict(d) for d in dets]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    expected = evaluator.eval["precision"][:, :, :, 0, -1].mean(axis=1)  # (T, K)
    m = tide.match(coco, dets, thresholds=tide.COCO_IOUS)
    assert len(m.score) < len(dets)  # the cap of 100 per image and class did bite
    for t in range(len(tide.COCO_IOUS)):
        for k, n in enumerate(m.instances()):
            counted = (m.cls == k) & ~m.ignored[:, t]
            assert tide.coco_ap(m.tp[counted, t], n) == pytest.approx(expected[t, k], abs=1e-12)


def test_table_operating_point_and_counts():
    coco, dets = operating_point_case()
    m = tide.match(coco, dets)
    table = report.per_class_table(
        m, report.coco_per_class(coco, dets, m.instances() > 0), report.confidence_curves(m)
    )
    # Mean F1 = mean of 2 TP / (detections + boxes): at x in (.6, .7]: (4/7 + 0) / 2; in
    # (.5, .6]: (6/8 + 0) / 2; in (.3, .5]: (6/8 + 2/2) / 2 = .875, the best; below: (6/9 + 1)
    # / 2. The highest confidence of the best interval is .5.
    assert table["best_f1_conf"] == 0.5
    assert table["best_f1"] == pytest.approx(0.875)
    all_row, a, b = table["rows"]
    assert (a["P"], a["R"], b["P"], b["R"]) == pytest.approx((0.75, 0.75, 1.0, 1.0))
    assert (all_row["P"], all_row["R"]) == pytest.approx((0.875, 0.875))
    assert [a[k] for k in ("images", "instances", "TP", "FP", "FN")] == [1, 4, 3, 2, 1]
    assert [b[k] for k in ("images", "instances", "TP", "FP", "FN")] == [1, 1, 1, 0, 0]
    assert [all_row[k] for k in ("images", "instances", "TP", "FP", "FN")] == [2, 5, 4, 2, 1]
    assert a["IoU"] == pytest.approx((1 + 0.6 + 1) / 3) and b["IoU"] == 1.0
    assert all_row["IoU"] == pytest.approx((1 + 0.6 + 1 + 1) / 4)
    # AP50 of a, COCO's 101 points: ranks TP TP FP TP FP over 4 boxes, precision envelope 1
    # up to recall .5 (51 points), .75 up to recall .75 (25 points), 0 beyond.
    assert a["AP50"] == pytest.approx((51 + 25 * 0.75) / 101)
    metrics = coco_metrics(coco, dets)
    assert (a["AP"], b["AP"]) == pytest.approx(
        (metrics["per_class"]["a"], metrics["per_class"]["b"])
    )
    assert (all_row["AP"], all_row["AP50"]) == pytest.approx((metrics["AP"], metrics["AP50"]))
    text = report.format_table(table)
    assert "conf 0.500" in text and text.splitlines()[2].split()[:3] == ["all", "2", "5"]


def test_confusion_matrix_cells():
    gt = [
        box(1, A, (0, 0, 10, 10)),
        box(1, B, (30, 0, 10, 10)),
        box(2, A, (0, 0, 10, 10)),
        box(2, A, (50, 50, 40, 40), crowd=1),
    ]
    dets = [
        det(1, A, (0, 0, 10, 10), 0.9),  # a on a: true positive
        det(1, A, (30, 0, 10, 10), 0.8),  # a on the b box: true b, predicted a
        det(1, B, (30, 0, 10, 10), 0.1),  # below conf 0.25: not counted
        det(2, B, (20, 20, 5, 5), 0.6),  # on nothing: background row, predicted b
        det(2, A, (60, 60, 10, 10), 0.7),  # in the crowd region of a: left out
    ]  # the a box of image 2 is found by nothing: true a, background column
    m = tide.match(coco_of(gt), dets)
    counts = report.confusion_matrix(m, conf=0.25)
    # rows true a, b, background; columns predicted a, b, background
    assert counts.tolist() == [[1, 0, 1], [1, 0, 0], [0, 1, 0]]


def test_voc_ap_against_a_hand_computation():
    # Ranked TP FP TP FP TP over 3 boxes: recall 1/3 1/3 2/3 2/3 1, precision 1 1/2 2/3 1/2
    # 3/5; envelope 1 2/3 2/3 3/5 3/5. Area: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45.
    assert report.voc_ap(np.array([1, 0, 1, 0, 1], bool), 3) == pytest.approx(34 / 45)
    assert report.voc_ap(np.zeros(0, bool), 2) == 0.0
    gt = [box(1, A, (x, 0, 10, 10)) for x in (0, 20, 40)]
    gt += [box(1, A, (0, 60, 30, 30), crowd=1), box(2, B, (0, 0, 10, 10))]
    dets = [
        det(1, A, (0, 0, 10, 10), 0.9),  # TP
        det(1, A, (1, 0, 10, 10), 0.8),  # duplicate: FP
        det(1, A, (20, 0, 10, 10), 0.7),  # TP
        det(1, A, (5, 65, 10, 10), 0.65),  # in the crowd region: ignored ("difficult")
        det(1, A, (70, 70, 5, 5), 0.6),  # background: FP
        det(1, A, (40, 0, 10, 10), 0.5),  # TP
        det(2, B, (0, 0, 10, 10), 0.4),  # b: AP 1
    ]
    voc = report.voc_map(tide.match(coco_of(gt), dets))
    assert voc["AP50"].tolist() == pytest.approx([34 / 45, 1.0])
    assert voc["mAP50"] == pytest.approx((34 / 45 + 1) / 2)


def exact(image, cat, x, score, y=0):
    return det(image, cat, (x, y, 10, 10), score)


# Each case plants one error type; class a boxes at x = 0 and 20 (Cls, Both, Bkg: one a box at
# x = 0 and one b box at x = 30). COCO's 101-point AP: ranks TP, FP over 2 boxes give
# precision 1 up to recall .5 (51 points), then nothing: 51 / 101.
TWO_A = [box(1, A, (0, 0, 10, 10)), box(1, A, (20, 0, 10, 10))]
A_AND_B = [box(1, A, (0, 0, 10, 10)), box(1, B, (30, 0, 10, 10))]
PLANTED = {
    # TP, duplicate, TP: precision 1 to recall .5, then 2/3: (51 + 50 * 2/3) / 101 -> 1
    "Dupe": (
        TWO_A,
        [exact(1, A, 0, 0.9), det(1, A, (1, 0, 10, 10), 0.85), exact(1, A, 20, 0.8)],
        50 / 303,
    ),
    # b found by nothing: AP (1 + 0) / 2; the a detection on the b box fixed: (1 + 1) / 2
    "Cls": (A_AND_B, [exact(1, A, 0, 0.9), exact(1, A, 30, 0.8)], 0.5),
    # the second a detection covers 30 / 100 of its box: 51 / 101 -> 1
    "Loc": (TWO_A, [exact(1, A, 0, 0.9), det(1, A, (20, 0, 3, 10), 0.8)], 50 / 101),
    # an a detection at IoU .3 with the b box ranks first: a's AP .5, b's 1 -> 1 and 1
    "Both": (
        A_AND_B,
        [det(1, A, (30, 0, 3, 10), 0.95), exact(1, A, 0, 0.9), exact(1, B, 30, 0.9)],
        0.25,
    ),
    "Bkg": (
        A_AND_B,
        [exact(1, A, 60, 0.95, y=60), exact(1, A, 0, 0.9), exact(1, B, 30, 0.9)],
        0.25,
    ),
    # one of two a boxes found: 51 / 101 -> 1 once the missed box leaves the ground truth
    "Miss": (TWO_A, [exact(1, A, 0, 0.9)], 50 / 101),
}


@pytest.mark.parametrize("planted", list(PLANTED))
def test_tide_finds_each_planted_error_and_its_gain(planted):
    gt, dets, gain = PLANTED[planted]
    errors = tide.error_breakdown(tide.match(coco_of(gt), dets))
    assert errors["counts"] == {n: int(n == planted) for n in tide.MAIN_ERRORS}
    expected = {n: gain if n == planted else 0.0 for n in tide.MAIN_ERRORS}
    assert {n: errors["gains"][n] for n in tide.MAIN_ERRORS} == pytest.approx(expected, abs=1e-12)


def test_tide_baseline_is_cocoeval_ap50_and_bounds_hold():
    coco, dets = random_case(seed=1)
    errors = tide.error_breakdown(tide.match(coco, dets))
    assert errors["AP50"] == pytest.approx(coco_metrics(coco, dets)["AP50"], abs=1e-12)
    gains = errors["gains"]
    assert sum(errors["counts"].values()) > 0
    # removing every false positive gains at least what removing any one type of them does
    assert gains["FalsePos"] >= max(gains["Dupe"], gains["Bkg"], gains["Both"]) - 1e-12


def test_write_report_writes_every_picture_and_a_json_able_dict(tmp_path):
    coco, dets = operating_point_case()
    out = report.write_report(coco, dets, ["a", "b"], str(tmp_path / "val"))
    for name in PICTURES:
        data = (tmp_path / "val" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
    assert out["files"] == list(PICTURES)
    json.dumps(out, allow_nan=False)
    assert out["best_f1_conf"] == 0.5 and out["rows"][0]["class"] == "all"
    assert out["errors"]["AP50"] == pytest.approx(out["rows"][0]["AP50"])
    assert out["confusion"]["labels"] == ["a", "b", "background"]
    text = report.format_report(out)
    assert "VOC mAP@0.5" in text and "Dupe" in text and "dAP50" in text


def test_write_report_without_detections(tmp_path):
    coco = coco_of([box(1, A, (0, 0, 10, 10)), box(2, A, (0, 0, 10, 10))])
    out = report.write_report(coco, [], None, str(tmp_path))
    all_row, a, b = out["rows"]
    assert (a["AP50"], a["AP"], a["R"], a["TP"], a["FN"]) == (0.0, 0.0, 0.0, 0, 2)
    assert (b["instances"], b["AP50"], b["R"]) == (0, None, None)
    assert out["voc_ap50"] == {"a": 0.0, "b": None} and out["voc_map50"] == 0.0
    assert out["errors"]["counts"]["Miss"] == 2 and out["errors"]["gains"]["Miss"] == 1.0
    assert out["confusion"]["counts"] == [[0, 0, 2], [0, 0, 0], [0, 0, 0]]
    assert all((tmp_path / name).stat().st_size > 0 for name in PICTURES)


def test_speed_accuracy_plot(tmp_path):
    rows = [
        {"size": s, "AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.1, "images_per_s": v}
        for s, ap, v in ((256, 0.3, 40.0), (320, 0.35, 28.0), (416, 0.38, 17.0))
    ]
    plot_speed_accuracy(rows, str(tmp_path / "speed.png"))
    assert (tmp_path / "speed.png").read_bytes().startswith(b"\x89PNG")
