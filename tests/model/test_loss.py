import keras
import numpy as np
import pytest
import tensorflow as tf

from detector.model.loss import TERMS, YoloLoss, identity_loss
from detector.model.network import build_inference_model, build_training_model
from detector.model.targets import encode_targets

ANCHORS = np.array([[1.0, 1.0], [2.5, 1.5], [4.0, 4.0]], np.float32)
C = 3


def batch(boxes_per_image, size=128, max_boxes=6):
    """y_true, true_boxes for a batch, from lists of (xyxy pixels, class)."""
    y, t = [], []
    for objects in boxes_per_image:
        boxes = np.array([o[0] for o in objects], np.float32).reshape(-1, 4)
        classes = np.array([o[1] for o in objects], np.int32)
        a, b = encode_targets(boxes, classes, (size, size), ANCHORS, max_boxes)
        y.append(a)
        t.append(b)
    return np.stack(y), np.stack(t)


def raw_output(y_true, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.5, (*y_true.shape[:4], 5 + C)).astype(np.float32)


def terms(layer, raw, y_true, true_boxes):
    return {k: v.numpy() for k, v in layer.loss_terms(raw, y_true, true_boxes).items()}


@pytest.mark.parametrize("objectness", ["mse", "bce"])
def test_no_objects_only_noobj_and_prior(objectness):
    y_true, true_boxes = batch([[], []])
    layer = YoloLoss(ANCHORS, C, objectness=objectness)
    t = terms(layer, raw_output(y_true), y_true, true_boxes)
    assert (t["coord"] == 0).all() and (t["cls"] == 0).all() and (t["obj"] == 0).all()
    assert (t["noobj"] > 0).all() and (t["prior"] > 0).all()
    no_warmup = YoloLoss(ANCHORS, C, warmup_images=0, objectness=objectness)
    total = no_warmup([raw_output(y_true), y_true, true_boxes])
    np.testing.assert_allclose(total, t["noobj"], rtol=1e-6)


@pytest.mark.parametrize("objectness", ["mse", "bce"])
def test_one_object_every_term_positive(objectness):
    y_true, true_boxes = batch([[((20, 30, 70, 60), 1)]])
    layer = YoloLoss(ANCHORS, C, objectness=objectness)
    t = terms(layer, raw_output(y_true), y_true, true_boxes)
    assert all(t[k][0] > 0 for k in TERMS), t


def perfect_prediction(y_true):
    """Raw outputs that decode exactly onto the targets, confident and correct."""
    grid = y_true.shape[1]
    raw = np.full((*y_true.shape[:4], 5 + C), -20.0, np.float32)
    for b, row, col, a in zip(*np.nonzero(y_true[..., 4]), strict=False):
        cx, cy, w, h, _, cls = y_true[b, row, col, a]
        ox, oy = cx * grid - col, cy * grid - row
        raw[b, row, col, a, :2] = np.log([ox / (1 - ox), oy / (1 - oy)])
        raw[b, row, col, a, 2:4] = np.log([w * grid / ANCHORS[a, 0], h * grid / ANCHORS[a, 1]])
        raw[b, row, col, a, 4] = 20.0
        raw[b, row, col, a, 5 + int(cls)] = 30.0
    return raw


@pytest.mark.parametrize("objectness", ["mse", "bce"])
def test_prediction_equal_to_target_has_near_zero_loss(objectness):
    y_true, true_boxes = batch([[((20, 30, 70, 60), 1), ((80, 10, 120, 100), 2)]])
    layer = YoloLoss(ANCHORS, C, objectness=objectness)
    t = terms(layer, perfect_prediction(y_true), y_true, true_boxes)
    for k in ("coord", "obj", "cls", "noobj"):
        assert t[k][0] < 1e-4, (k, t[k])


def test_rescore_targets_iou():
    y_true, true_boxes = batch([[((20, 30, 70, 60), 1)]])
    raw = perfect_prediction(y_true)
    cell = np.nonzero(y_true[..., 4])
    raw[cell + (2,)] += np.log(2.0)  # predicted width doubled: IoU 0.5, objectness 1
    rescored = terms(YoloLoss(ANCHORS, C, object_scale=1.0), raw, y_true, true_boxes)
    plain = terms(YoloLoss(ANCHORS, C, object_scale=1.0, rescore=False), raw, y_true, true_boxes)
    np.testing.assert_allclose(rescored["obj"], [(1 - 0.5) ** 2], rtol=1e-3)
    assert plain["obj"][0] < 1e-6


def test_ignore_threshold_spares_good_unassigned_predictors():
    y_true, true_boxes = batch([[((32, 32, 64, 64), 0)]])
    raw = perfect_prediction(y_true)
    # A neighbouring anchor of the same cell predicting nearly the same box, confident.
    row, col, a = (i[0] for i in np.nonzero(y_true[0, ..., 4]))
    other = (a + 1) % len(ANCHORS)
    raw[0, row, col, other, :4] = raw[0, row, col, a, :4]
    raw[0, row, col, other, 2:4] += np.log(ANCHORS[a] / ANCHORS[other])
    raw[0, row, col, other, 4] = 20.0
    spared = terms(YoloLoss(ANCHORS, C, ignore_thresh=0.6), raw, y_true, true_boxes)
    punished = terms(YoloLoss(ANCHORS, C, ignore_thresh=1.0), raw, y_true, true_boxes)
    assert spared["noobj"][0] < 1e-4 and punished["noobj"][0] > 0.99


def test_padded_box_slots_change_nothing():
    objects = [[((20, 30, 70, 60), 1)]]
    y_few, tb_few = batch(objects, max_boxes=1)
    y_many, tb_many = batch(objects, max_boxes=50)
    raw = raw_output(y_few)
    layer = YoloLoss(ANCHORS, C)
    a, b = terms(layer, raw, y_few, tb_few), terms(layer, raw, y_many, tb_many)
    for k in TERMS:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)


def test_coord_term_scales_small_boxes_up():
    small = batch([[((40, 40, 48, 48), 0)]])
    layer = YoloLoss(ANCHORS, C)
    y_true, true_boxes = small
    raw = perfect_prediction(y_true)
    raw[np.nonzero(y_true[..., 4]) + (2,)] += 1.0  # tw off by exactly 1
    w, h = y_true[y_true[..., 4] > 0][0, 2:4]
    np.testing.assert_allclose(
        terms(layer, raw, y_true, true_boxes)["coord"], [2 - w * h], rtol=1e-4
    )


def test_gradients_finite_and_loss_float32_under_mixed_precision():
    y_true, true_boxes = batch([[((20, 30, 70, 60), 1)], []])
    raw = tf.Variable(raw_output(y_true, seed=3) * 40.0)  # extreme logits
    layer = YoloLoss(ANCHORS, C)
    with tf.GradientTape() as tape:
        loss = layer([tf.cast(raw, tf.float16), y_true, true_boxes])
    grad = tape.gradient(loss, raw)
    assert loss.dtype == tf.float32 and np.isfinite(loss).all()
    assert np.isfinite(grad.numpy()).all()


def test_warmup_switches_off_after_seen_images():
    y_true, true_boxes = batch([[], []])
    layer = YoloLoss(ANCHORS, C, warmup_images=4)
    raw = raw_output(y_true)
    for _ in range(2):
        layer([raw, y_true, true_boxes], training=True)
    assert layer.seen.numpy() == 4
    assert terms(layer, raw, y_true, true_boxes)["prior"].max() == 0


def test_training_model_outputs_loss_and_tracks_terms():
    inference = build_inference_model(C, ANCHORS.tolist(), "tiny", 0.25, 64)
    model = build_training_model(inference, YoloLoss(ANCHORS, C), max_boxes=6)
    model.compile(optimizer="adam", loss=identity_loss)
    y_true, true_boxes = batch([[((5, 5, 40, 50), 2)], []], size=64)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    history = model.fit([images, y_true, true_boxes], np.zeros(2), epochs=1, verbose=0)
    assert set(TERMS) | {"loss"} <= set(history.history)
    parts = sum(history.history[k][0] for k in TERMS)
    assert history.history["loss"][0] == pytest.approx(parts, rel=1e-4)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    assert identity_loss(np.zeros(2), np.array([1.0, 2.0])).tolist() == [1.0, 2.0]


def test_bce_objectness_gradient_does_not_vanish_for_low_scores():
    y_true, true_boxes = batch([[((20, 30, 70, 60), 1)]])
    raw = tf.Variable(perfect_prediction(y_true))
    cell = tuple(int(i[0]) for i in np.nonzero(y_true[..., 4]))
    raw[cell + (4,)].assign(-8.0)  # a true object scored 0.0003
    grads = {}
    for mode in ("mse", "bce"):
        layer = YoloLoss(ANCHORS, C, objectness=mode, rescore=False)
        with tf.GradientTape() as tape:
            loss = layer.loss_terms(raw, y_true, true_boxes)["obj"]
        grads[mode] = abs(float(tape.gradient(loss, raw)[cell + (4,)]))
    assert grads["bce"] > 1000 * grads["mse"]
    assert grads["bce"] == pytest.approx(5.0, rel=1e-2)  # object_scale · (1 - sigmoid(-8))


def test_ciou_reference_values():
    """Hand-computed CIoU: a 2x2 box and the same box shifted by 1 along x (IoU 2/6,
    centre distance 1, enclosing box 3x2: d²/c² = 1/13, equal aspect ratios: v = 0),
    and a 2x1 box inside a 2x2 one sharing its centre (IoU 1/2, v = (4/pi²)(pi/4 -
    atan 2)²)."""
    from detector.model.loss import elementwise_ciou_cxcywh

    a = np.array([[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]], np.float32)
    b = np.array([[2.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 1.0]], np.float32)
    v = 4 / np.pi**2 * (np.pi / 4 - np.arctan(2.0)) ** 2
    expected = [1 / 3 - 1 / 13, 0.5 - v * v / (1 - 0.5 + v)]
    np.testing.assert_allclose(elementwise_ciou_cxcywh(b, a).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(elementwise_ciou_cxcywh(a, a).numpy(), [1.0, 1.0], atol=1e-6)


def test_ciou_box_term_zero_on_target_and_gradients_finite():
    y_true, true_boxes = batch([[((20, 30, 70, 60), 1), ((80, 10, 120, 100), 2)], []])
    layer = YoloLoss(ANCHORS, C, box="ciou", objectness="bce")
    t = terms(layer, perfect_prediction(y_true), y_true, true_boxes)
    assert t["coord"][0] < 1e-4 and t["coord"][1] == 0
    raw = tf.Variable(raw_output(y_true))
    with tf.GradientTape() as tape:
        coord = layer.loss_terms(raw, y_true, true_boxes)["coord"]
    grad = tape.gradient(coord, raw).numpy()
    assert np.isfinite(grad).all() and np.abs(grad[..., :4]).sum() > 0
    assert coord.numpy()[0] > 0 and coord.numpy()[1] == 0
    # only the responsible predictors' box channels get a gradient
    assert (grad[..., 4:] == 0).all()
    responsible = y_true[..., 4] > 0
    assert (grad[~responsible] == 0).all()
    with pytest.raises(ValueError, match="box must be"):
        YoloLoss(ANCHORS, C, box="giou")


@pytest.mark.parametrize("box", ["mse", "ciou"])
def test_xla_compiled_terms_equal_the_graph_ops(box):
    """`xla` (the default) computes the same loss and gradient as the plain ops, eagerly
    and inside a traced step, at two grid sizes (multi-scale batches), through the warm-up
    switch; and it is the compiled function that runs."""
    layers = {x: YoloLoss(ANCHORS, C, box=box, warmup_images=6, xla=x) for x in (True, False)}
    assert (
        layers[True].get_config()["xla"]
        and YoloLoss.from_config(layers[False].get_config()).xla is False
    )

    def step(layer, raw, y_true, true_boxes):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer([raw, y_true, true_boxes], training=True))
        return loss, tape.gradient(loss, raw)

    traced = {x: tf.function(lambda *a, x=x: step(layers[x], *a)) for x in layers}
    for size, seed in ((128, 0), (96, 1), (128, 2)):  # 4 images each: warm-up ends at 2nd
        y_true, true_boxes = batch([[((20, 30, 70, 60), 1)], [], [((5, 5, 40, 50), 2)], []], size)
        raw = tf.Variable(raw_output(y_true, seed))
        for run in (step, None):
            got = {
                x: (run or traced[x])(*((layers[x],) if run else ()), raw, y_true, true_boxes)
                for x in layers
            }
            np.testing.assert_allclose(got[True][0], got[False][0], rtol=1e-5)
            np.testing.assert_allclose(got[True][1], got[False][1], rtol=1e-4, atol=1e-6)
    assert layers[True].seen.numpy() == layers[False].seen.numpy() == 24
    compiled = layers[True]._compiled_terms
    assert compiled is not None and compiled.experimental_get_tracing_count() >= 1
    assert layers[False]._compiled_terms is None


def class_term_by_hand(raw, y_true):
    """Per-image class term of every responsible predictor, in numpy: -log softmax at
    its object's class, and (B, C) the same split by the object's class."""
    logits = raw[..., 5:].astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_class = np.zeros((len(raw), C))
    for b, row, col, a in zip(*np.nonzero(y_true[..., 4]), strict=True):
        c = int(y_true[b, row, col, a, 5])
        per_class[b, c] -= log_probs[b, row, col, a, c]
    return per_class.sum(-1), per_class


def three_images():
    y_true, true_boxes = batch(
        [[((20, 30, 70, 60), 1), ((80, 10, 120, 100), 2)], [((5, 5, 40, 50), 0)], []]
    )
    return raw_output(y_true, seed=5), y_true, true_boxes


@pytest.mark.parametrize("xla", [False, True])
def test_no_class_weights_leave_the_loss_as_before(xla):
    """class_weights=None (``loss.class_weights: none``) computes the loss of the layer
    before class weights existed: the per-image totals below were printed by the
    previous commit's YoloLoss on these inputs, and the class term is the plain
    cross-entropy."""
    raw, y_true, true_boxes = three_images()
    layer = YoloLoss(ANCHORS, C, class_weights=None, xla=xla)
    before = [18.1757755279541, 17.192684173583984, 13.555059432983398]
    np.testing.assert_allclose(layer([raw, y_true, true_boxes]), before, rtol=1e-5)
    expected, _ = class_term_by_hand(raw, y_true)
    np.testing.assert_allclose(terms(layer, raw, y_true, true_boxes)["cls"], expected, rtol=1e-5)
    assert layer.get_config()["class_weights"] is None


@pytest.mark.parametrize("c", range(C))
def test_class_weights_scale_the_class_term_of_one_box_by_its_weight(c):
    y_true, true_boxes = batch([[((20, 30, 70, 60), c)]])
    raw = raw_output(y_true, seed=c)
    weights = [0.5, 2.0, 7.0]
    plain = terms(YoloLoss(ANCHORS, C), raw, y_true, true_boxes)
    weighted = terms(YoloLoss(ANCHORS, C, class_weights=weights), raw, y_true, true_boxes)
    assert plain["cls"][0] > 0
    np.testing.assert_allclose(weighted["cls"], weights[c] * plain["cls"], rtol=1e-6)
    for k in set(TERMS) - {"cls"}:
        np.testing.assert_array_equal(weighted[k], plain[k])


def test_class_weights_weigh_each_object_by_its_own_class():
    """Objects of classes 1 and 2 in one image, of class 0 in another: each image's class
    term is the sum of its objects' cross-entropies times their class's weight."""
    raw, y_true, true_boxes = three_images()
    weights = np.array([0.25, 3.0, 1.5])
    layer = YoloLoss(ANCHORS, C, class_weights=weights.tolist())
    _, per_class = class_term_by_hand(raw, y_true)
    assert (per_class[:2].sum(-1) > 0).all()
    np.testing.assert_allclose(
        terms(layer, raw, y_true, true_boxes)["cls"], per_class @ weights, rtol=1e-5
    )


@pytest.mark.parametrize("weights", [[1.0, 2.0], [1.0, 0.0, 1.0], [1.0, -1.0, 1.0], "auto"])
def test_class_weights_must_be_one_positive_weight_per_class(weights):
    with pytest.raises(ValueError, match="class_weights must be None or 3 weights > 0"):
        YoloLoss(ANCHORS, C, class_weights=weights)
