"""The evaluation callback: COCO AP of the evaluation copy on the run's schedule.

`BestCocoAP` decides when to evaluate, evaluates (at the epoch end, or with ``eval.async``
on a snapshot in a worker thread) and puts the 12 COCO numbers into the epoch's logs.
What is done with an evaluation is up to its parts (`detector.engine.callbacks.listeners`),
composed by ``build.make_callbacks``: the best checkpoint (`KeepBest`, best.py), early
stopping (`EarlyStop`, early_stop.py), validation images in TensorBoard (`ValImages`,
images.py), the user's events (`UserEvents`, user.py).
"""

import math
from concurrent.futures import Future, ThreadPoolExecutor

import keras
import numpy as np

from detector.engine.callbacks.listeners import Evaluation
from detector.engine.callbacks.logs import LateLogs
from detector.engine.eval_copy import EvalCopy
from detector.evaluation.coco import STAT_NAMES, EvalImages, evaluate_model
from detector.inference.detector import make_predict_fn


class BestCocoAP(keras.callbacks.Callback):
    """Evaluates COCO AP of the evaluation copy on evaluation epochs and hands each
    evaluation to its listeners.

    On evaluation epochs, and at the last epoch, it evaluates the (EMA) weights with
    ``evaluate_model`` and puts the 12 COCO numbers into ``logs`` (NaN on epochs without
    evaluation, so CSV columns stay fixed).

    With `background` (``eval.async``) the epoch end only copies the weights (a snapshot,
    EMA included) and a worker thread evaluates the snapshot on a second evaluation model
    while the next epoch trains (the listeners' ``on_evaluated`` runs there). At most one
    evaluation runs: the next epoch end (or the end of training) waits for it and lands
    it. The epoch's metrics reach the loggers in `late_logs` (metrics.csv, TensorBoard)
    once known, under their own epoch.

    Args:
        eval_copy: EvalCopy. Of the network being trained.
        dataset: Dataset. Validation split. coco_gt: its pycocotools ground truth.
        is_eval_epoch: callable(int) -> bool. Whether a 1-based epoch is evaluated
            (``EvalConfig.is_eval_epoch``); the last epoch always is.
        listeners: list of EvalListener. What is done with each evaluation, in order.
            Defaults to none.
        batch_size: int. Images per forward pass. Defaults to 16.
        background: bool. Evaluate snapshots in a worker thread. Defaults to False.
        cache_mb: float. Keep the resized validation images in memory across evaluations
            when they fit in this many MB (``eval.cache_mb``; `EvalImages`). Defaults
            to 0 (read them at every evaluation).
        **predict_kwargs: score_threshold, nms_iou, max_detections (``make_predict_fn``).
    """

    def __init__(
        self,
        eval_copy: EvalCopy,
        dataset,
        coco_gt,
        is_eval_epoch,
        *,
        listeners=(),
        batch_size: int = 16,
        background: bool = False,
        cache_mb: float = 0.0,
        **predict_kwargs,
    ):
        super().__init__()
        self.eval_copy = eval_copy
        self.dataset = dataset
        self.coco_gt = coco_gt
        self.is_eval_epoch = is_eval_epoch
        self.listeners = list(listeners)
        self.batch_size = batch_size
        self.predict_kwargs = predict_kwargs
        # None when the list is wired without data (tests of the callback order)
        self.images = EvalImages(dataset.records, cache_mb) if dataset is not None else None
        self.predict_fn = None
        self.background = background
        # The worker's own model: SaveLast syncs `eval_copy` at every epoch end.
        self.spare = EvalCopy(eval_copy.inference_model) if background else None
        self.spare_predict_fn = None
        self.pool = None
        self.pending: tuple[int, Future] | None = None
        self.logged: dict[int, dict] = {}  # epoch (0-based) -> its STAT_NAMES values
        self.late_logs = LateLogs(self) if background else None

    def set_model(self, model):
        super().set_model(model)
        for listener in self.listeners:
            listener.set_model(model)

    def on_train_begin(self, logs=None):
        self.predict_fn = make_predict_fn(self.eval_copy.model, **self.predict_kwargs)
        if self.background:
            self.spare_predict_fn = make_predict_fn(self.spare.model, **self.predict_kwargs)
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="eval")
        for listener in self.listeners:
            listener.on_train_begin()

    def on_train_end(self, logs=None):
        try:
            self.collect()  # the last epoch's evaluation counts
        finally:
            if self.pool is not None:
                self.pool.shutdown()
            for listener in self.listeners:
                listener.on_train_end()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        self.collect()
        last = getattr(self.model, "stop_training", False) or epoch + 1 == self.params.get("epochs")
        if not (self.is_eval_epoch(epoch + 1) or last):
            self.logged[epoch] = dict.fromkeys(STAT_NAMES, math.nan)
            if not self.background:
                logs.update(self.logged[epoch])
            return
        if self.background:
            weights = self.eval_copy.snapshot(self._optimizer())
            self.pending = (epoch, self.pool.submit(self._evaluate_snapshot, epoch, weights))
            return
        curves = {}
        metrics = self.evaluate(curves)
        evaluation = Evaluation(epoch, metrics, curves, self.eval_copy.model, self.predict_fn)
        self._evaluated(evaluation)
        logs.update(self._land(evaluation))

    def collect(self) -> None:
        """Background mode: waits for the pending evaluation (re-raising its error) and
        lands it; nothing to do otherwise."""
        if self.pending is None:
            return
        epoch, future = self.pending
        self.pending = None
        evaluation = future.result()
        ap = evaluation.metrics["AP"]
        print(f"\nepoch {epoch + 1}: AP {ap:.4f} (evaluated in the background)")
        self._land(evaluation)

    def land_pending(self) -> None:
        """After training ended by an exception (Ctrl-C, a data error): waits for the
        evaluation in flight and hands its epoch's row to the loggers, so an interrupted
        ``eval.async`` run loses no evaluated epoch (its best checkpoint, its row of
        metrics.csv). A second Ctrl-C skips the wait; an error of the evaluation itself
        propagates (the caller keeps the first one)."""
        if self.pending is not None:
            print(f"\nlanding epoch {self.pending[0] + 1}'s evaluation (Ctrl-C again to skip)")
            self.collect()
        if self.late_logs is not None:
            self.late_logs.flush()

    def _evaluate_snapshot(self, epoch: int, weights: list[np.ndarray]) -> Evaluation:
        """The worker's job: the snapshot's evaluation, handed to ``on_evaluated``."""
        model = self.spare.model
        model.set_weights(weights)
        curves = {}
        metrics = self._metrics(model, self.spare_predict_fn, curves)
        evaluation = Evaluation(epoch, metrics, curves, model, self.spare_predict_fn)
        self._evaluated(evaluation)
        return evaluation

    def _evaluated(self, evaluation: Evaluation) -> None:
        for listener in self.listeners:
            listener.on_evaluated(evaluation)

    def _land(self, evaluation: Evaluation) -> dict:
        """Records the epoch's numbers and hands the evaluation to ``on_landed``; returns
        the numbers."""
        epoch = evaluation.epoch
        self.logged[epoch] = {name: evaluation.metrics[name] for name in STAT_NAMES}
        for listener in self.listeners:
            listener.on_landed(evaluation)
        return self.logged[epoch]

    def _optimizer(self):
        return getattr(self.model, "optimizer", None) if self.model is not None else None

    def evaluate(self, curves=None) -> dict:
        """COCO metrics of the current (EMA) weights."""
        model = self.eval_copy.sync(self._optimizer())
        return self._metrics(model, self.predict_fn, curves)

    def _metrics(self, model, predict_fn, curves) -> dict:
        input_size = model.get_layer("yolo_head").input_size
        metrics, _ = evaluate_model(
            model,
            self.dataset,
            input_size,
            self.coco_gt,
            curves,
            batch_size=self.batch_size,
            predict_fn=predict_fn,
            images=self.images,
            keep_results=False,
        )
        return metrics
