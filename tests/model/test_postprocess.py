import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from detector.model.postprocess import combined_nms, decode, nms, padded_nms

# Two anchors in one cell, same centre: boxes 0.5 and 0.6 wide on a 2x2 grid overlap
# with IoU 0.5² / 0.6² ≈ 0.69, above NMS's 0.45.
ANCHORS = [[1.0, 1.0], [1.2, 1.2]]
CERTAIN = 30.0  # a logit whose sigmoid / softmax share is 1 in float32


def logit(p):
    return float(np.log(p / (1 - p)))


def raw_grid(predictions, batch=1):
    """A (B, 2, 2, 2, 5 + 2) raw tensor where every predictor scores ~0 except
    ``predictions``: ((image, row, col, anchor), objectness probability, class)."""
    raw = np.zeros((batch, 2, 2, len(ANCHORS), 7), np.float32)
    raw[..., 4] = -CERTAIN
    for index, score, cls in predictions:
        raw[index + (4,)] = logit(score)
        raw[index + (5 + cls,)] = CERTAIN
    return raw


def numpy(outputs):
    return [ops.convert_to_numpy(o) for o in outputs]


def test_decode_hand_computed_boxes_scores_and_order():
    raw = raw_grid([((0, 1, 0, 1), 0.9, 1)])
    boxes, scores = numpy(decode(raw, ANCHORS))
    assert boxes.shape == (1, 8, 4) and scores.shape == (1, 8, 2)
    index = (1 * 2 + 0) * 2 + 1  # (row, col, anchor) flattened row-major
    # cell (row 1, col 0): centre (0.25, 0.75); anchor 1.2 cells of 2 -> 0.6 wide.
    np.testing.assert_allclose(boxes[0, index], [-0.05, 0.45, 0.55, 1.05], atol=1e-6)
    np.testing.assert_allclose(scores[0, index], [0.0, 0.9], atol=1e-6)
    np.testing.assert_allclose(np.delete(scores[0], index, axis=0), 0.0, atol=1e-12)


def test_single_class_scores_are_the_objectness_without_a_softmax_warning():
    """One class: the class share is 1, the score sigmoid(objectness), and Keras' warning
    about a softmax over an axis of size 1 (printed on every single-class run) is not
    triggered, in the decoder or in the loss (whose class term is 0)."""
    import warnings

    from detector.model.loss import YoloLoss

    raw = np.random.default_rng(0).normal(0, 2, (2, 3, 3, 2, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, scores = numpy(decode(tf.constant(raw), ANCHORS))
        y_true = np.zeros((2, 3, 3, 2, 6), np.float32)
        y_true[0, 1, 1, 0] = [0.5, 0.5, 0.3, 0.3, 1.0, 0.0]
        terms = YoloLoss(ANCHORS, 1).loss_terms(raw, y_true, np.zeros((2, 4, 4), np.float32))
    np.testing.assert_allclose(
        scores[..., 0], 1 / (1 + np.exp(-raw[..., 4].reshape(2, -1))), rtol=1e-6
    )
    assert float(ops.max(terms["cls"])) == 0.0 and float(ops.max(terms["coord"])) > 0


def test_nms_overlapping_same_class_keeps_the_higher_score():
    raw = raw_grid([((0, 1, 0, 0), 0.6, 0), ((0, 1, 0, 1), 0.9, 0)])
    boxes, scores, classes, valid = numpy(nms(*decode(raw, ANCHORS)))
    assert valid.tolist() == [1]
    np.testing.assert_allclose(scores[0, 0], 0.9, atol=1e-6)
    np.testing.assert_allclose(boxes[0, 0], [-0.05, 0.45, 0.55, 1.05], atol=1e-6)
    assert classes[0, 0] == 0


def test_nms_keeps_overlapping_boxes_of_different_classes_per_image():
    same = [((0, 1, 0, 0), 0.6, 0), ((0, 1, 0, 1), 0.9, 0)]
    different = [((1, 1, 0, 0), 0.6, 0), ((1, 1, 0, 1), 0.9, 1)]
    raw = raw_grid(same + different, batch=2)
    boxes, scores, classes, valid = numpy(nms(*decode(raw, ANCHORS)))
    assert valid.tolist() == [1, 2]
    np.testing.assert_allclose(scores[1, :2], [0.9, 0.6], atol=1e-6)
    assert classes[1, :2].tolist() == [1, 0]
    np.testing.assert_allclose(boxes[1, 1], [0.0, 0.5, 0.5, 1.0], atol=1e-6)


@pytest.mark.parametrize("threshold, kept", [(0.5, [0.9, 0.6]), (0.7, [0.9]), (0.95, [])])
def test_nms_score_threshold_respected(threshold, kept):
    raw = raw_grid([((0, 0, 1, 0), 0.6, 0), ((0, 1, 0, 1), 0.9, 1)])
    _, scores, _, valid = numpy(nms(*decode(raw, ANCHORS), score_threshold=threshold))
    assert valid.tolist() == [len(kept)]
    np.testing.assert_allclose(scores[0, : len(kept)], kept, atol=1e-6)
    assert (scores[0, len(kept) :] == 0).all()


def test_nms_max_detections_caps_the_output():
    raw = raw_grid([((0, r, c, 0), 0.5 + 0.1 * (2 * r + c), 0) for r in (0, 1) for c in (0, 1)])
    _, scores, _, valid = numpy(nms(*decode(raw, ANCHORS), max_detections=3))
    assert scores.shape == (1, 3) and valid.tolist() == [3]
    np.testing.assert_allclose(scores[0], [0.8, 0.7, 0.6], atol=1e-6)


def clustered_detections(seed: int, batch=2, n=200, classes=4):
    """Decoded-like boxes (B, N, 4) xyxy in clusters (so that they overlap) and scores
    (B, N, C) skewed low, as a detector's are."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2, 0.8, (batch, 8, 2))[:, rng.integers(0, 8, n)]
    centres += rng.normal(0, 0.03, centres.shape)
    sizes = rng.uniform(0.05, 0.3, (batch, n, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).astype(np.float32)
    scores = (rng.uniform(0, 1, (batch, n, classes)) ** 3).astype(np.float32)
    return boxes, scores


def assert_same_detections(actual, expected):
    """Two (boxes, scores, classes, valid) results: the same detections in the same order,
    zeros after the valid ones."""
    actual, expected = numpy(actual), numpy(expected)
    np.testing.assert_array_equal(actual[3], expected[3])
    for got, want in zip(actual[:3], expected[:3], strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("max_detections", [7, 100])
def test_padded_nms_equals_combined_nms(seed, max_detections):
    boxes, scores = clustered_detections(seed)
    settings = {"score_threshold": 0.05, "iou_threshold": 0.45, "max_detections": max_detections}
    expected = combined_nms(boxes, scores, **settings)
    valid = ops.convert_to_numpy(expected[3])
    assert (valid > 0).all() and (valid <= max_detections).all()
    if max_detections == 7:
        assert (valid == 7).all()  # the cap bites
    assert_same_detections(padded_nms(boxes, scores, **settings), expected)
    compiled = tf.function(lambda b, s: padded_nms(b, s, **settings), jit_compile=False)
    assert_same_detections(compiled(boxes, scores), expected)


def test_padded_nms_separates_classes_and_caps_each_class():
    # The same box three times: class 0 scores two copies, class 1 the third. Within class
    # 0 the copy scoring less is suppressed; class 1's copy stays.
    boxes = np.tile(np.float32([[0.1, 0.1, 0.5, 0.5]]), (1, 3, 1))
    scores = np.float32([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.7]]])
    for fn in (padded_nms, combined_nms):
        _, kept, classes, valid = numpy(fn(boxes, scores, 0.1, 0.45, 10))
        assert valid.tolist() == [2]
        np.testing.assert_allclose(kept[0, :2], [0.9, 0.7])
        assert classes[0, :2].tolist() == [0, 1] and (kept[0, 2:] == 0).all()


@pytest.mark.parametrize("gpus, chosen", [([], "combined_nms"), (["GPU:0"], "padded_nms")])
def test_nms_runs_on_the_device_at_hand(monkeypatch, gpus, chosen):
    import detector.model.postprocess as postprocess

    calls = []
    for name in ("combined_nms", "padded_nms"):
        monkeypatch.setattr(postprocess, name, lambda *a, name=name: calls.append(name))
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: gpus)
    postprocess.nms(*clustered_detections(0, batch=1, n=4, classes=2))
    assert calls == [chosen]
