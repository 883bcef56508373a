import numpy as np
import pytest

from detector.model.anchors import kmeans_anchors, mean_best_iou
from detector.model.targets import decode_targets, encode_targets
from detector.utils.boxes import cxcywh_to_xyxy, iou_xyxy, shape_iou, xyxy_to_cxcywh, xyxy_to_xywh


def test_iou_hand_computed():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 10]])
    # overlap 5x5=25, union 175; identical; disjoint; half of a.
    np.testing.assert_allclose(iou_xyxy(a, b), [[25 / 175, 1.0, 0.0, 0.5]])


def test_iou_degenerate_boxes_are_zero_not_nan():
    assert iou_xyxy([[3, 3, 3, 3]], [[3, 3, 3, 3]])[0, 0] == 0.0


def test_shape_iou_hand_computed():
    # 2x4 vs 4x2 centred: intersection 2x2=4, union 8+8-4=12.
    np.testing.assert_allclose(shape_iou([[2, 4]], [[4, 2], [2, 4]]), [[4 / 12, 1.0]])


def test_box_format_round_trips():
    boxes = np.random.default_rng(0).uniform(0, 100, (20, 4)).astype(np.float32)
    boxes[:, 2:] += boxes[:, :2]
    np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes, atol=1e-4)
    np.testing.assert_allclose(xyxy_to_xywh([[1, 2, 4, 8]]), [[1, 2, 3, 6]])


ANCHORS = np.array([[1.0, 1.0], [3.0, 1.5], [1.5, 3.0], [6.0, 6.0]], np.float32)


def test_encode_decode_round_trip():
    boxes = np.array([[10, 20, 50, 40], [100, 30, 120, 120], [0, 0, 256, 256]], np.float32)
    classes = np.array([2, 0, 1])
    y_true, true_boxes = encode_targets(boxes, classes, (256, 256), ANCHORS, max_boxes=5)
    assert y_true.shape == (8, 8, 4, 6) and true_boxes.shape == (5, 4)
    assert y_true[..., 4].sum() == 3
    decoded, decoded_classes = decode_targets(y_true, (256, 256))
    order = np.argsort(decoded[:, 0] * 1000 + decoded[:, 1])
    expected = np.argsort(boxes[:, 0] * 1000 + boxes[:, 1])
    np.testing.assert_allclose(decoded[order], boxes[expected], atol=1e-3)
    np.testing.assert_array_equal(decoded_classes[order], classes[expected])
    np.testing.assert_allclose(true_boxes[3:], 0)


def test_encode_picks_cell_of_centre_and_best_shape_anchor():
    # Centre (72, 40) -> column 2, row 1 of the 8x8 grid; 3:1.5 cells -> anchor 1.
    box = np.array([[72 - 48, 40 - 24, 72 + 48, 40 + 24]], np.float32)
    y_true, _ = encode_targets(box, np.array([3]), (256, 256), ANCHORS, max_boxes=2)
    assert list(zip(*np.nonzero(y_true[..., 4]), strict=False)) == [(1, 2, 1)]
    np.testing.assert_allclose(y_true[1, 2, 1], [72 / 256, 40 / 256, 96 / 256, 48 / 256, 1, 3])


def test_encode_without_boxes_is_all_zero():
    y_true, true_boxes = encode_targets(np.zeros((0, 4)), np.zeros(0), (64, 96), ANCHORS, 3)
    assert y_true.shape == (2, 3, 4, 6) and not y_true.any() and not true_boxes.any()


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[1, 1], [4, 2], [2, 6]], np.float64)
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, (50, 2)) for c in centres])
    anchors = kmeans_anchors(wh, 3)
    np.testing.assert_allclose(anchors, centres[np.argsort(centres.prod(1))], rtol=0.05)
    assert mean_best_iou(wh, anchors) > 0.9
    with pytest.raises(ValueError, match="no boxes"):
        kmeans_anchors(np.zeros((3, 2)), 2)
