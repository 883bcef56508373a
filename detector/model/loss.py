"""The YOLOv2 region loss as a Keras layer, and the identity loss the training model uses.

Units: raw predictions are darknet's ``tx, ty, tw, th, to`` + class logits per anchor;
``y_true`` and ``true_boxes`` hold boxes as ``cx, cy, w, h`` normalised to the image
(0..1); anchors are in grid cells. The box codec is ``detector.model.grid``.
"""

import math

import keras
from keras import ops

from detector.model.grid import cell_grid, decode_raw, encode_raw

TERMS = ("coord", "obj", "noobj", "cls", "prior")


@keras.saving.register_keras_serializable(package="detector")
def identity_loss(y_true, y_pred):
    """The training model already outputs the per-image loss; return it unchanged."""
    del y_true
    return y_pred


def elementwise_iou_cxcywh(a, b):
    """IoU of boxes a (..., 4) and b (..., 4), cxcywh, broadcast. Returns (...); 0 for
    zero-size (padding) boxes."""
    top_left = ops.maximum(a[..., :2] - a[..., 2:] / 2, b[..., :2] - b[..., 2:] / 2)
    bottom_right = ops.minimum(a[..., :2] + a[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2)
    inter = ops.prod(ops.maximum(bottom_right - top_left, 0.0), axis=-1)
    union = ops.prod(a[..., 2:], axis=-1) + ops.prod(b[..., 2:], axis=-1) - inter
    return inter / ops.maximum(union, 1e-9)


def elementwise_ciou_cxcywh(pred, truth):
    """Complete IoU (Zheng et al., 2020) of boxes pred (..., 4) and truth (..., 4), cxcywh.

    CIoU = IoU - d² / c² - alpha·v: d is the distance of the centres, c the diagonal of
    the smallest box enclosing both, v = (4/pi²)·(atan(w_t/h_t) - atan(w_p/h_p))² the
    aspect-ratio mismatch and alpha = v / (1 - IoU + v), held constant for the gradient.
    1 for identical boxes, down to -1. Returns (...).
    """
    iou = elementwise_iou_cxcywh(pred, truth)
    enclose = ops.maximum(pred[..., :2] + pred[..., 2:] / 2, truth[..., :2] + truth[..., 2:] / 2)
    enclose -= ops.minimum(pred[..., :2] - pred[..., 2:] / 2, truth[..., :2] - truth[..., 2:] / 2)
    diagonal = ops.sum(ops.square(enclose), axis=-1) + 1e-9
    distance = ops.sum(ops.square(pred[..., :2] - truth[..., :2]), axis=-1)

    def angle(box):
        return ops.arctan(box[..., 2] / ops.maximum(box[..., 3], 1e-9))

    v = (4.0 / math.pi**2) * ops.square(angle(truth) - angle(pred))
    alpha = ops.stop_gradient(v / ops.maximum(1.0 - iou + v, 1e-9))
    return iou - distance / diagonal - alpha * v


def pairwise_iou_cxcywh(a, b):
    """IoU of every box of ``a`` (B, S, S, A, 4) with every box of ``b`` (B, M, 4).

    Both cxcywh in one unit. Returns (B, S, S, A, M).
    """
    return elementwise_iou_cxcywh(a[:, :, :, :, None, :], b[:, None, None, None, :, :])


def _checked_class_weights(weights, num_classes: int) -> list[float] | None:
    """`weights` as a list of `num_classes` finite floats > 0, or None; else a ValueError."""
    if weights is None:
        return None
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        values = []
    if len(values) != num_classes or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"YoloLoss: class_weights must be None or {num_classes} weights > 0 (one per "
            f"class), got {weights!r}"
        )
    return values


@keras.saving.register_keras_serializable(package="detector")
class YoloLoss(keras.layers.Layer):
    """YOLOv2's region loss (darknet ``region_layer``), one value per image.

    Inputs ``[raw, y_true, true_boxes]``:
        raw: (B, S_h, S_w, A, 5 + C) raw network output.
        y_true: (B, S_h, S_w, A, 6) per responsible anchor ``cx, cy, w, h`` (normalised),
            1 in channel 4, class index in channel 5; zeros elsewhere.
        true_boxes: (B, M, 4) every ground truth box ``cx, cy, w, h`` (normalised),
            zero rows as padding; used for the no-object ignore test.
    Returns (B,) the loss of each image: sum of the terms in ``TERMS``. Each term's
    batch mean is tracked by a metric of the same name (progress bar, history, CSV).

    Args:
        anchors: list of [w, h]. Anchor sizes in grid cells.
        num_classes: int. Number of classes C.
        coord_scale, object_scale, noobject_scale, class_scale: float. Term weights
            (darknet: 1, 5, 1, 1).
        ignore_thresh: float. A predictor whose best IoU with any truth exceeds it gets
            no no-object loss. Defaults to 0.6.
        rescore: bool. Objectness target is the predicted box's IoU with its truth
            (else 1). Defaults to True.
        warmup_images: int. For this many training images, every predictor without an
            object is pulled towards its anchor prior. Defaults to 12800.
        prior_scale: float. Weight of that pull. Defaults to 0.01.
        objectness: str. "mse": darknet's squared error on sigmoid(to); "bce": binary
            cross-entropy on the logit (YOLOv3 onwards), whose gradient does not vanish
            once the no-object term has pushed every score towards 0. Defaults to "mse".
        box: str. The coordinate term. "mse": darknet's squared error of sigmoid(tx, ty)
            and tw, th against their targets, weighted by (2 - w·h); "ciou": 1 - CIoU of
            the decoded box with its truth (YOLOv4 onwards), which scores the overlap
            itself, the same for every object size. Both times `coord_scale`.
            Defaults to "mse".
        class_weights: list of float or None. One weight > 0 per class: the class term
            of a predictor responsible for an object of class c is multiplied by
            ``class_weights[c]`` (class imbalance; ``detector.engine.class_weights`` derives
            them from the training set). None: every class weighs 1, the term unchanged.
            Defaults to None.
        xla: bool. Compute the terms (forward and gradient) as one XLA computation
            inside the step, also when the step itself is not compiled (CPU, several
            replicas). They are ~350 small tensor ops whose per-op dispatch, not their
            arithmetic, is their cost: on a 2-core CPU 4.0 ms per step as graph ops
            against 0.6 ms compiled (batch 8, 10x10x5 predictors). Defaults to True.
    """

    def __init__(
        self,
        anchors,
        num_classes: int,
        coord_scale: float = 1.0,
        object_scale: float = 5.0,
        noobject_scale: float = 1.0,
        class_scale: float = 1.0,
        ignore_thresh: float = 0.6,
        rescore: bool = True,
        warmup_images: int = 12800,
        prior_scale: float = 0.01,
        objectness: str = "mse",
        box: str = "mse",
        class_weights=None,
        xla: bool = True,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.anchors = [[float(w), float(h)] for w, h in anchors]
        self.num_classes = int(num_classes)
        self.coord_scale = float(coord_scale)
        self.object_scale = float(object_scale)
        self.noobject_scale = float(noobject_scale)
        self.class_scale = float(class_scale)
        self.ignore_thresh = float(ignore_thresh)
        self.rescore = bool(rescore)
        self.warmup_images = int(warmup_images)
        self.prior_scale = float(prior_scale)
        if objectness not in ("mse", "bce"):
            raise ValueError(f"YoloLoss: objectness must be 'mse' or 'bce', got {objectness!r}")
        self.objectness = objectness
        if box not in ("mse", "ciou"):
            raise ValueError(f"YoloLoss: box must be 'mse' or 'ciou', got {box!r}")
        self.box = box
        self.class_weights = _checked_class_weights(class_weights, self.num_classes)
        self.xla = bool(xla)
        self._compiled_terms = None  # the tf.function of loss_terms, made on first call
        self.trackers = [keras.metrics.Mean(name=term) for term in TERMS]
        self.seen = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="float32",
            trainable=False,
            name="seen",
            aggregation="sum",  # under tf.distribute: every replica's images count
        )

    def call(self, inputs, training=None):
        raw, y_true, true_boxes = (ops.cast(t, "float32") for t in inputs)
        in_warmup = ops.cast(self.seen < self.warmup_images, "float32")
        terms = self._terms_fn()(raw, y_true, true_boxes, in_warmup)
        if training:
            self.seen.assign_add(ops.cast(ops.shape(raw)[0], "float32"))
        for tracker, term in zip(self.trackers, terms.values(), strict=False):
            tracker.update_state(term)
        return ops.sum(ops.stack(list(terms.values()), axis=0), axis=0)

    def _terms_fn(self):
        """`loss_terms`, compiled by XLA when `xla` (a pure function of its tensors: the
        `seen` counter is read outside, so no variable is captured under a strategy)."""
        if not self.xla:
            return self.loss_terms
        if self._compiled_terms is None:
            import tensorflow as tf  # the backend this project runs on

            self._compiled_terms = tf.function(
                self.loss_terms, jit_compile=True, reduce_retracing=True
            )
        return self._compiled_terms

    def loss_terms(self, raw, y_true, true_boxes, in_warmup=None):
        """The named loss terms, each (B,): see ``TERMS``. `in_warmup`: 1.0 while the
        prior warm-up lasts (default: from the `seen` counter), else 0.0."""
        cell, size = cell_grid(raw)
        anchors = ops.convert_to_tensor(self.anchors, dtype="float32")
        xy_cell = ops.sigmoid(raw[..., 0:2])
        twh = raw[..., 2:4]
        pred_boxes = ops.stop_gradient(decode_raw(raw, anchors))

        has_obj = y_true[..., 4]
        truth = y_true[..., 0:4]
        best_iou = ops.max(pairwise_iou_cxcywh(pred_boxes, true_boxes), axis=-1)
        no_obj = (1.0 - has_obj) * ops.cast(best_iou <= self.ignore_thresh, "float32")

        coord = has_obj * self.coord_error(raw, truth, anchors, cell, size)

        if self.rescore:
            obj_target = ops.stop_gradient(elementwise_iou_cxcywh(pred_boxes, truth))
        else:
            obj_target = 1.0
        obj_err, noobj_err = self.objectness_errors(raw[..., 4], obj_target)
        obj = self.object_scale * has_obj * obj_err
        noobj = self.noobject_scale * no_obj * noobj_err

        if self.num_classes > 1:  # one class: log-softmax is 0 (and Keras warns about it)
            labels = ops.one_hot(ops.cast(y_true[..., 5], "int32"), self.num_classes)
            log_probs = ops.log_softmax(raw[..., 5:], axis=-1)
            cls = -self.class_scale * has_obj * ops.sum(labels * log_probs, axis=-1)
            if self.class_weights is not None:  # each object's class term times its weight
                weights = ops.convert_to_tensor(self.class_weights, dtype="float32")
                cls = cls * ops.sum(labels * weights, axis=-1)
        else:
            cls = ops.zeros_like(has_obj)

        if in_warmup is None:
            in_warmup = ops.cast(self.seen < self.warmup_images, "float32")
        prior_err = ops.sum(ops.square(xy_cell - 0.5), -1) + ops.sum(ops.square(twh), -1)
        prior = in_warmup * self.prior_scale * (1.0 - has_obj) * prior_err

        def per_image(t):
            return ops.sum(t, axis=(1, 2, 3))

        return dict(zip(TERMS, map(per_image, (coord, obj, noobj, cls, prior)), strict=False))

    def coord_error(self, raw, truth, anchors, cell, size):
        """Per-predictor coordinate error (weighted by `coord_scale`) towards `truth`."""
        if self.box == "ciou":
            return self.coord_scale * (
                1.0 - elementwise_ciou_cxcywh(decode_raw(raw, anchors), truth)
            )
        # As darknet: sigmoid(tx) (not tx) regresses onto the in-cell offset, tw onto
        # log(w / anchor). Empty slots encode to finite targets, zeroed by has_obj.
        target_xy = truth[..., 0:2] * size - cell
        target_twh = encode_raw(truth, anchors)[..., 2:4]
        box_scale = self.coord_scale * (2.0 - truth[..., 2] * truth[..., 3])
        return box_scale * (
            ops.sum(ops.square(ops.sigmoid(raw[..., 0:2]) - target_xy), -1)
            + ops.sum(ops.square(raw[..., 2:4] - target_twh), -1)
        )

    def objectness_errors(self, logits, target):
        """Per-predictor objectness error towards ``target`` and towards 0."""
        if self.objectness == "bce":
            # BCE(t, sigmoid(x)) = softplus(x) - t·x, stable for any logit.
            return ops.softplus(logits) - target * logits, ops.softplus(logits)
        score = ops.sigmoid(logits)
        return ops.square(target - score), ops.square(score)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0],)

    def get_config(self):
        return {
            **super().get_config(),
            "anchors": self.anchors,
            "num_classes": self.num_classes,
            "coord_scale": self.coord_scale,
            "object_scale": self.object_scale,
            "noobject_scale": self.noobject_scale,
            "class_scale": self.class_scale,
            "ignore_thresh": self.ignore_thresh,
            "rescore": self.rescore,
            "warmup_images": self.warmup_images,
            "prior_scale": self.prior_scale,
            "objectness": self.objectness,
            "box": self.box,
            "class_weights": self.class_weights,
            "xla": self.xla,
        }
