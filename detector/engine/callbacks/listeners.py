"""The parts of the evaluation callback: what `BestCocoAP` hands each evaluation to.

An `Evaluation` is one evaluated epoch; an `EvalListener` does one thing with it (keep the
best checkpoint, stop early, draw validation images, tell the user's callbacks). Kept apart
from `BestCocoAP` so that a part imports neither it nor the evaluation code.
"""

import dataclasses


@dataclasses.dataclass
class Evaluation:
    """One evaluated epoch, as the listeners see it.

    Attributes:
        epoch: int. 0-based, as Keras numbers epochs.
        metrics: dict. `evaluate_model`'s metrics (the 12 COCO numbers, ``per_class``).
        curves: dict. The precision-recall curves of the evaluation (``plot_pr``'s input).
        model: keras.Model. The model evaluated (with ``eval.async`` the worker's copy,
            holding the epoch-end snapshot). predict_fn: its compiled prediction function.
        is_best: bool. Set by the part that keeps the best checkpoint when this
            evaluation's AP beat the best so far. Defaults to False.
        checkpoint: str or None. The checkpoint written for it (best.keras), if any.
    """

    epoch: int
    metrics: dict
    curves: dict
    model: object = None
    predict_fn: object = None
    is_best: bool = False
    checkpoint: str | None = None


class EvalListener:
    """A part of `BestCocoAP`: what it does with each evaluation.

    `on_evaluated` runs where the evaluation ran (with ``eval.async``: the worker thread,
    while the next epoch trains; it may use ``evaluation.model``); `on_landed` runs in the
    training thread once the evaluation is known there, in epoch order (with
    ``eval.async``: at the next epoch end, the end of training, or after an interruption,
    `BestCocoAP.land_pending`). Listeners are called in their list order.
    """

    model = None  # the training model (Keras' `set_model`)

    def set_model(self, model) -> None:
        self.model = model

    def on_train_begin(self) -> None:
        """At the start of training, before any evaluation."""

    def on_evaluated(self, evaluation: Evaluation) -> None:
        """Where the evaluation ran, right after it."""

    def on_landed(self, evaluation: Evaluation) -> None:
        """In the training thread, once per evaluated epoch, in epoch order."""

    def on_train_end(self) -> None:
        """At the end of training, after the last evaluation landed."""
