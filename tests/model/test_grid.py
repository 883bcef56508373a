import os
import subprocess
import sys

import numpy as np
import pytest
from keras import ops

from detector.model import grid, targets
from detector.model.grid import STRIDE, decode_raw, encode_raw, grid_offsets
from detector.model.loss import YoloLoss
from detector.model.postprocess import decode

ANCHORS = np.array([[1.0, 1.0], [2.5, 1.5], [4.0, 4.0]], np.float32)


def numpy(x):
    return ops.convert_to_numpy(x)


def test_hand_computed_box_from_zero_raw():
    raw = np.zeros((1, 4, 4, 1, 4), np.float32)
    boxes = numpy(decode_raw(raw, [[2.0, 3.0]]))
    # cell (row 1, col 2): centre in the middle of the cell, size = anchor in cells.
    np.testing.assert_allclose(boxes[0, 1, 2, 0], [2.5 / 4, 1.5 / 4, 2 / 4, 3 / 4], rtol=1e-6)


def test_hand_computed_box_on_a_non_square_grid():
    # 2 rows x 4 columns (a 64x128 input): x is divided by 4, y by 2.
    raw = np.zeros((1, 2, 4, 1, 6), np.float32)
    raw[0, 1, 2, 0, :4] = [np.log(3.0), 0.0, np.log(2.0), 0.0]  # sigmoid(log 3) = 0.75
    raw[0, 1, 2, 0, 4:] = 99.0  # objectness and class channels are not read
    boxes = numpy(decode_raw(raw, [[2.0, 3.0]]))
    np.testing.assert_allclose(boxes[0, 1, 2, 0], [2.75 / 4, 1.5 / 2, 4 / 4, 3 / 2], rtol=1e-6)
    np.testing.assert_allclose(boxes[0, 0, 0, 0], [0.5 / 4, 0.5 / 2, 2 / 4, 3 / 2], rtol=1e-6)


def test_size_logits_clipped_before_exp():
    raw = np.zeros((1, 1, 1, 1, 4), np.float32)
    raw[..., 2:4] = [50.0, -50.0]
    w, h = numpy(decode_raw(raw, [[1.0, 1.0]]))[0, 0, 0, 0, 2:]
    np.testing.assert_allclose([w, h], [np.exp(10.0), np.exp(-10.0)], rtol=1e-5)


def test_raw_decode_encode_round_trip():
    rng = np.random.default_rng(0)
    raw = rng.uniform(-3, 3, (2, 3, 5, 3, 4)).astype(np.float32)
    back = numpy(encode_raw(decode_raw(raw, ANCHORS), ANCHORS))
    np.testing.assert_allclose(back, raw, atol=1e-4)


def test_box_encode_decode_round_trip():
    rng = np.random.default_rng(1)
    grid_h, grid_w = 3, 5
    col, row = (numpy(o)[..., None] for o in grid_offsets(grid_h, grid_w))
    offset = rng.uniform(0.05, 0.95, (2, grid_h, grid_w, 3, 2))
    cxcy = (offset + np.concatenate([col, row], axis=-1)) / [grid_w, grid_h]
    wh = rng.uniform(0.02, 1.0, (2, grid_h, grid_w, 3, 2))
    boxes = np.concatenate([cxcy, wh], axis=-1).astype(np.float32)
    back = numpy(decode_raw(encode_raw(boxes, ANCHORS), ANCHORS))
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-6)


def test_encode_hand_computed_and_empty_slots_finite():
    boxes = np.zeros((1, 2, 4, 1, 4), np.float32)
    boxes[0, 1, 2, 0] = [2.75 / 4, 1.5 / 2, 1.0, 1.5]
    t = numpy(encode_raw(boxes, [[2.0, 3.0]]))
    np.testing.assert_allclose(t[0, 1, 2, 0], [np.log(3.0), 0.0, np.log(2.0), 0.0], atol=1e-5)
    assert np.isfinite(t).all()
    np.testing.assert_allclose(t[0, 0, 0, 0, 2:], np.log(grid.SIZE_EPS), rtol=1e-6)


def test_loss_and_postprocess_read_the_same_boxes():
    """The loss's rescored objectness target is the IoU of its own decoded box with the
    truth: with postprocess.decode's boxes as the truths, that IoU must be 1."""
    rng = np.random.default_rng(2)
    batch, grid_h, grid_w, num_classes = 2, 3, 5, 2
    raw = rng.normal(0, 1, (batch, grid_h, grid_w, len(ANCHORS), 5 + num_classes))
    raw = raw.astype(np.float32)
    raw[..., 4] = 30.0  # sigmoid = 1: the objectness error is (1 - IoU)²
    xyxy = numpy(decode(raw, ANCHORS)[0]).reshape(*raw.shape[:4], 4)
    cxcywh = np.concatenate(
        [(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], -1
    )
    picked = [(0, 0, 4, 1), (0, 2, 1, 0), (1, 1, 3, 2)]
    loss = YoloLoss(ANCHORS, num_classes, object_scale=1.0)

    def obj_term(boxes):
        y_true = np.zeros((*raw.shape[:4], 6), np.float32)
        for index in picked:
            y_true[index] = [*boxes[index], 1.0, 0.0]
        true_boxes = np.zeros((batch, 1, 4), np.float32)
        return numpy(loss.loss_terms(raw, y_true, true_boxes)["obj"])

    assert obj_term(cxcywh).max() < 1e-9
    swapped = cxcywh[..., [1, 0, 3, 2]]  # what a row/column mix-up would read
    assert obj_term(swapped).min() > 1e-3


def test_stride_has_one_home_and_targets_stay_numpy_only():
    assert STRIDE == 32 and targets.STRIDE is grid.STRIDE
    # `import detector` loads Keras (it registers the custom layers), so the package is
    # stood in for by a bare one: what is checked is that the modules need no TensorFlow.
    package = os.path.dirname(os.path.abspath(grid.__file__))
    code = (
        "import sys, types; package = types.ModuleType('detector'); "
        f"package.__path__ = [{package!r}]; sys.modules['detector'] = package; "
        "import detector.model.anchors, detector.model.targets; print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("shape", [(2, 3), (4, 1)])
def test_grid_offsets_index_columns_and_rows(shape):
    col, row = (numpy(o) for o in grid_offsets(*shape))
    assert col.shape == row.shape == (1, *shape, 1)
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    np.testing.assert_array_equal(col[0, ..., 0], cols)
    np.testing.assert_array_equal(row[0, ..., 0], rows)


def test_encoded_targets_sit_in_the_cell_the_codec_reads():
    boxes = np.array([[10, 5, 60, 40], [100, 50, 159, 95], [64, 32, 96, 64]], np.float32)
    y_true, _ = targets.encode_targets(boxes, np.array([0, 1, 2]), (96, 160), ANCHORS, 4)
    assert y_true.shape[:2] == (96 // STRIDE, 160 // STRIDE)
    raw = numpy(encode_raw(y_true[None, ..., :4], ANCHORS))
    held = y_true[..., 4] > 0
    assert held.sum() == 3
    assert (np.abs(raw[0][held][:, :2]) < 13.0).all()  # offsets inside the cell
    decoded = numpy(decode_raw(raw, ANCHORS))[0]
    np.testing.assert_allclose(decoded[held], y_true[held][:, :4], rtol=1e-5, atol=1e-6)
