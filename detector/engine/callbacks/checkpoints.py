"""Checkpoint selection: the float32 evaluation copy, best-COCO-AP and last checkpoints.

`EvalCopy` is the one evaluation model of a run (built from the inference model's config,
float32, receiving the EMA weights on demand); `BestCocoAP` evaluates it and keeps the
best checkpoint, `SaveLast` saves it at every epoch end. Both are handed the same
`EvalCopy` by ``build.make_callbacks``, so neither reaches into the other.

With ``eval.async`` `BestCocoAP` evaluates a snapshot of the weights on a second copy in
a worker thread, and `LateLogs` holds each epoch's logs back from metrics.csv and
TensorBoard until that epoch's AP is known.
"""

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor

import keras
import numpy as np

from detector.evaluation.coco import STAT_NAMES, EvalImages, evaluate_model
from detector.inference.detector import draw_predictions, make_predict_fn
from detector.model.network import float32_config
from detector.utils.atomic import atomic_save, atomic_write_json


def ema_weights(inference_model, optimizer) -> list[np.ndarray]:
    """The inference model's weights with each trainable variable replaced by the
    optimiser's moving average of it (Keras ``use_ema``), in ``get_weights`` order.
    Without EMA, the weights themselves.

    Under ``mixed_float16`` Keras wraps the optimiser in a ``LossScaleOptimizer``, which
    refuses ``use_ema`` itself: the averages are kept by its ``inner_optimizer``.
    """
    while optimizer is not None and hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    averages = {}
    if optimizer is not None and getattr(optimizer, "use_ema", False) and optimizer.built:
        pairs = zip(
            optimizer._trainable_variables,
            optimizer._model_variables_moving_average,
            strict=True,
        )
        averages = {id(var): avg for var, avg in pairs if avg is not None}
    return [np.asarray(averages.get(id(v), v)) for v in inference_model.weights]


class EvalCopy:
    """A float32 copy of the inference model, rebuilt from its config (no custom_objects:
    every layer is registered), that takes the training weights on demand.

    Args:
        inference_model: keras.Model. The network being trained (its weights are read,
            never swapped).
    """

    def __init__(self, inference_model: keras.Model):
        self.inference_model = inference_model
        self._model = None

    @property
    def model(self) -> keras.Model:
        """The evaluation model (built on first use, outside the training's scope)."""
        if self._model is None:
            config = float32_config(self.inference_model.get_config())
            self._model = keras.Model.from_config(config)
        return self._model

    def sync(self, optimizer=None) -> keras.Model:
        """Copies the current weights in (the optimiser's EMA of them when it keeps one)
        and returns the evaluation model."""
        self.model.set_weights(ema_weights(self.inference_model, optimizer))
        return self.model

    def snapshot(self, optimizer=None) -> list[np.ndarray]:
        """A copy of the weights `sync` would copy in, in ``get_weights`` order: later
        training steps do not change it."""
        return [np.array(w, copy=True) for w in ema_weights(self.inference_model, optimizer)]


class BestCocoAP(keras.callbacks.Callback):
    """Evaluates COCO AP on the evaluation copy and keeps the checkpoint with the best AP.

    On evaluation epochs, and at the last epoch, it evaluates the (EMA) weights with
    ``evaluate_model`` and puts the 12 COCO numbers into ``logs`` (NaN on epochs without
    evaluation, so CSV columns stay fixed). On a new best AP it saves ``best.keras`` and
    ``best.json`` atomically, and ``pr_curve.png``.

    With `background` (``eval.async``) the epoch end only copies the weights (a snapshot,
    EMA included) and a worker thread evaluates the snapshot on a second evaluation model
    while the next epoch trains; the snapshot's AP decides, as above, whether the snapshot
    is saved as best. At most one evaluation runs: the next epoch end (or the end of
    training) waits for it, then applies ``patience``. The epoch's metrics reach the
    loggers in `late_logs` (metrics.csv, TensorBoard) once known, under their own epoch.

    Args:
        eval_copy: EvalCopy. Of the network being trained.
        dataset: Dataset. Validation split. coco_gt: its pycocotools ground truth.
        run_dir: str. Where best.keras / best.json go.
        is_eval_epoch: callable(int) -> bool. Whether a 1-based epoch is evaluated
            (``EvalConfig.is_eval_epoch``); the last epoch always is.
        best_ap: float. Best AP so far (a resumed run passes its own). Defaults to -1.
        stale: int. Evaluations since that best (a resumed run passes its own). Defaults
            to 0.
        patience: int. Stop training after this many evaluations without a better AP
            (0 = never). Defaults to 0.
        image_dir: str or None. TensorBoard log folder for a few validation images with
            their predicted boxes at each evaluation. Defaults to None (no images).
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
        run_dir: str,
        is_eval_epoch,
        *,
        best_ap: float = -1.0,
        stale: int = 0,
        patience: int = 0,
        image_dir: str | None = None,
        batch_size: int = 16,
        background: bool = False,
        cache_mb: float = 0.0,
        **predict_kwargs,
    ):
        super().__init__()
        self.eval_copy = eval_copy
        self.dataset = dataset
        self.coco_gt = coco_gt
        self.run_dir = run_dir
        self.is_eval_epoch = is_eval_epoch
        self.best_ap = best_ap
        self.patience = patience
        self.stale = stale
        self.early_stopped = False
        self.batch_size = batch_size
        self.predict_kwargs = predict_kwargs
        self.image_dir = image_dir
        # None when the list is wired without data (tests of the callback order)
        self.images = EvalImages(dataset.records, cache_mb) if dataset is not None else None
        self.image_writer = None
        self.predict_fn = None
        self.background = background
        # The worker's own model: SaveLast syncs `eval_copy` at every epoch end.
        self.spare = EvalCopy(eval_copy.inference_model) if background else None
        self.spare_predict_fn = None
        self.pool = None
        self.pending: tuple[int, Future] | None = None
        self.logged: dict[int, dict] = {}  # epoch (0-based) -> its STAT_NAMES values
        self.late_logs = LateLogs(self) if background else None

    def on_train_begin(self, logs=None):
        self.predict_fn = make_predict_fn(self.eval_copy.model, **self.predict_kwargs)
        if self.background:
            self.spare_predict_fn = make_predict_fn(self.spare.model, **self.predict_kwargs)
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="eval")
        if self.image_dir:
            import tensorflow as tf

            self.image_writer = tf.summary.create_file_writer(self.image_dir)

    def on_train_end(self, logs=None):
        try:
            self.collect()  # the last epoch's evaluation counts
        finally:
            if self.pool is not None:
                self.pool.shutdown()
            if self.image_writer is not None:
                self.image_writer.close()

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
        improved = self._keep_if_best(epoch, metrics, curves, self.eval_copy.model, self.predict_fn)
        logs.update(self._judge(epoch, metrics, improved))

    def collect(self) -> None:
        """Background mode: waits for the pending evaluation (re-raising its error) and
        applies its outcome; nothing to do otherwise."""
        if self.pending is None:
            return
        epoch, future = self.pending
        self.pending = None
        metrics, improved = future.result()
        print(f"\nepoch {epoch + 1}: AP {metrics['AP']:.4f} (evaluated in the background)")
        self._judge(epoch, metrics, improved)

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

    def _evaluate_snapshot(self, epoch: int, weights: list[np.ndarray]) -> tuple[dict, bool]:
        """The worker's job: the snapshot's metrics, and whether it was saved as best."""
        model = self.spare.model
        model.set_weights(weights)
        curves = {}
        metrics = self._metrics(model, self.spare_predict_fn, curves)
        return metrics, self._keep_if_best(epoch, metrics, curves, model, self.spare_predict_fn)

    def _keep_if_best(self, epoch, metrics, curves, model, predict_fn) -> bool:
        """TensorBoard images; saves `model` as best on a better AP. Returns whether it was."""
        if self.image_writer is not None:
            self.log_images(epoch, model=model, predict_fn=predict_fn)
        if metrics["AP"] <= self.best_ap:
            return False
        self.best_ap = metrics["AP"]
        self.save_best(epoch, metrics, curves, model=model)
        return True

    def _judge(self, epoch: int, metrics: dict, improved: bool) -> dict:
        """Records the epoch's numbers and applies ``patience``; returns the numbers."""
        self.logged[epoch] = {name: metrics[name] for name in STAT_NAMES}
        self.stale = 0 if improved else self.stale + 1
        if self.patience and self.stale >= self.patience and not self.early_stopped:
            print(f"\nno better AP in {self.stale} evaluations: stopping (train.patience)")
            self.early_stopped = True
            self.model.stop_training = True
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

    def log_images(self, epoch: int, count: int = 4, model=None, predict_fn=None) -> None:
        """The first `count` validation images with the predictions of `model` (default:
        the evaluation copy), in TensorBoard."""
        import tensorflow as tf

        model = model or self.eval_copy.model
        drawn = draw_predictions(model, self.dataset, predict_fn or self.predict_fn, count)
        with self.image_writer.as_default():
            tf.summary.image("val_predictions", drawn, step=epoch + 1, max_outputs=count)
        self.image_writer.flush()

    def save_best(self, epoch: int, metrics: dict, curves: dict | None = None, model=None):
        """Saves `model` (default: the evaluation copy) as best.keras, with best.json and
        pr_curve.png, through the atomic writers."""
        path = os.path.join(self.run_dir, "best.keras")
        atomic_save(path, (model or self.eval_copy.model).save, suffix=".keras")
        atomic_write_json(os.path.join(self.run_dir, "best.json"), {"epoch": epoch + 1, **metrics})
        if curves:
            from detector.evaluation.training_plots import plot_pr

            title = f"best model (epoch {epoch + 1}): precision-recall, class mean"
            plot_pr(curves, os.path.join(self.run_dir, "pr_curve.png"), title)


class LateLogs(keras.callbacks.Callback):
    """The epoch loggers of an ``eval.async`` run (metrics.csv, TensorBoard): every hook
    reaches them at once except ``on_epoch_end``, which reaches them in epoch order once
    `best` knows the epoch's COCO numbers, merged into that epoch's logs. So a row always
    holds its own epoch's AP, as without ``eval.async``; it is written at the latest at
    the next epoch end (the end of training for the last one).

    Args:
        best: BestCocoAP. Its ``logged`` maps each finished epoch to its numbers.
        callbacks: list of keras Callback. The loggers. Defaults to none yet.
    """

    def __init__(self, best: BestCocoAP, callbacks: list | None = None):
        super().__init__()
        self.best = best
        self.callbacks = list(callbacks or [])
        self.queue: list[tuple[int, dict]] = []

    def _each(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def set_model(self, model):
        super().set_model(model)
        self._each("set_model", model)

    def set_params(self, params):
        super().set_params(params)
        self._each("set_params", params)

    def on_train_begin(self, logs=None):
        self._each("on_train_begin", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._each("on_epoch_begin", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._each("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._each("on_train_batch_end", batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.queue.append((epoch, dict(logs or {})))
        self.flush()

    def on_train_end(self, logs=None):
        self.flush()
        self._each("on_train_end", logs)

    def flush(self) -> None:
        """Hands over every queued epoch whose numbers are known, oldest first."""
        while self.queue and self.queue[0][0] in self.best.logged:
            epoch, logs = self.queue.pop(0)
            self._each("on_epoch_end", epoch, {**logs, **self.best.logged[epoch]})


class SaveLast(keras.callbacks.Callback):
    """Saves the evaluation copy (float32, the EMA weights when there are) to
    ``last.keras`` atomically at every epoch end.

    Args:
        eval_copy: EvalCopy. Of the network being trained.
        path: str. The checkpoint file.
    """

    def __init__(self, eval_copy: EvalCopy, path: str):
        super().__init__()
        self.eval_copy = eval_copy
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        model = self.eval_copy.sync(self.model.optimizer)
        atomic_save(self.path, model.save, suffix=".keras")
