"""``loss.class_weights``: the per-class weights of the class term, from the config or
(``auto``) from the training set's box counts.

The ``auto`` formula, inverse square-root frequency (Mahajan et al. 2018, "Exploring the
limits of weakly supervised pretraining", square-root sampling; Gupta et al. 2019, LVIS,
whose repeat-factor sampling in detectron2 uses sqrt(t / f) for the same reason)::

    n_c  boxes of class c in the training records, N = sum of n_c
    m_c  = max(n_c, max(n) / MAX_RATIO**2)        rare extremes clipped
    w_c  = N * m_c**-1/2 / sum_k n_k * m_k**-1/2   for every class with boxes
    w_c  = 1                                       for a class without boxes (never used)

Why the square root: inverse frequency (1/n) lets a class seen once outweigh a class seen
250 times 250 to 1, on the evidence of one box; the square root halves that on a log
scale and has no parameter to tune per dataset (the "effective number" of Cui et al.
2019 interpolates between the two, but through a beta that depends on the dataset's
size). The weights have a per-box mean of 1 (sum_c n_c w_c = N, as scikit-learn's
"balanced" weights): they move the class term's weight between classes, not between
the class term and the box and objectness terms, so ``loss.class_scale`` keeps its
meaning. No weight exceeds MAX_RATIO times another.
"""

import numpy as np

from detector.config.schema import LossConfig
from detector.data.records import Dataset, Records
from detector.utils.safe_yaml import short

MAX_RATIO = 10.0  # the largest weight over the smallest, at most
FORMULA = "1/sqrt(box count), mean 1 per box"
SHOWN = 3  # weights shown at each end of the line for many classes


def class_counts(records: Records, num_classes: int) -> np.ndarray:
    """int64 (C,): the boxes of each class in `records`."""
    classes = [np.asarray(r.classes, np.int64) for r in records]
    flat = np.concatenate(classes) if classes else np.zeros(0, np.int64)
    return np.bincount(flat, minlength=num_classes)[:num_classes]


def auto_class_weights(counts: np.ndarray) -> np.ndarray:
    """float64 (C,): the module's inverse square-root weights of box `counts` (C,)."""
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    weights = np.ones_like(counts)
    if not present.any():
        return weights
    clipped = np.maximum(counts, counts.max() / MAX_RATIO**2)
    raw = clipped[present] ** -0.5
    weights[present] = counts.sum() * raw / np.sum(counts[present] * raw)
    return weights


def describe(weights, names: list[str], counts=None, source: str = "") -> str:
    """One line: each class's weight (and box count), or for more than 2·SHOWN + 1
    classes the SHOWN lightest and heaviest and how many classes have no box."""

    def item(c: int) -> str:
        n = int(counts[c]) if counts is not None else -1
        boxes = "" if n < 0 else f" ({n} box{'es' * (n != 1)})"
        return f"{names[c]} {weights[c]:.3g}{boxes}"

    head = f"loss.class_weights {source}".rstrip()
    if len(weights) <= 2 * SHOWN + 1:
        return f"{head}: " + ", ".join(item(c) for c in range(len(weights)))
    shown = np.flatnonzero(np.asarray(counts) > 0) if counts is not None else range(len(weights))
    order = sorted(shown, key=lambda c: weights[c])
    low = ", ".join(item(int(c)) for c in order[:SHOWN])
    high = ", ".join(item(int(c)) for c in order[::-1][:SHOWN])
    absent = len(weights) - len(shown)
    rest = f"; {absent} classes without boxes weigh 1" if absent else ""
    return (
        f"{head}, {len(weights)} classes: lightest {low}; heaviest {high}{rest} "
        "(all in the run's config.yaml)"
    )


def choose_class_weights(loss: LossConfig, train: Dataset) -> list[float] | str:
    """``loss.class_weights`` for a run on `train`: "none", the given list checked against
    the training classes, or the ``auto`` weights of its box counts; printed unless none.

    Raises:
        ValueError: a list whose length is not the number of training classes.
    """
    setting, names = loss.class_weights, train.names
    if setting == "none":
        return "none"
    if setting == "auto":
        counts = class_counts(train.records, len(names))
        weights = auto_class_weights(counts).tolist()
        print(describe(weights, names, counts, f"auto ({FORMULA})"))
        return weights
    if len(setting) != len(names):
        raise ValueError(
            f"loss.class_weights: {len(setting)} weights for the {len(names)} classes of "
            f"the training data ({short(names)}): give one weight per class, in the "
            "dataset's class order"
        )
    print(describe(setting, names, source="(list)"))
    return list(setting)
