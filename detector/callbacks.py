"""Training callbacks: best-COCO-AP checkpointing, the wall-clock budget, the lr schedule,
the NaN guard, the metrics CSV."""

import csv
import math
import os
import time

import keras
import numpy as np

from detector.evaluation import STAT_NAMES, evaluate_model, make_predict_fn, write_json
from detector.io import atomic_save


def ema_weights(inference_model, optimizer) -> list[np.ndarray]:
    """The inference model's weights with each trainable variable replaced by the
    optimiser's moving average of it (Keras ``use_ema``), in ``get_weights`` order.
    Without EMA, the weights themselves."""
    averages = {}
    if optimizer is not None and getattr(optimizer, "use_ema", False) and optimizer.built:
        for var, avg in zip(optimizer._trainable_variables,
                            optimizer._model_variables_moving_average, strict=True):  # fmt: skip
            if avg is not None:
                averages[id(var)] = avg
    return [np.asarray(averages.get(id(v), v)) for v in inference_model.weights]


class NonFiniteLoss(RuntimeError):
    """Raised by `NonFiniteGuard`: training stops before the bad step reaches any state."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops the run at the first NaN/Inf loss, naming the epoch and step.

    It raises (instead of setting ``stop_training``) so that no epoch-end callback runs:
    the resume state and checkpoints stay those of the last good epoch.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            terms = {k: float(v) for k, v in (logs or {}).items() if k != "loss"}
            raise NonFiniteLoss(
                f"non-finite loss ({loss}) at epoch {self.epoch + 1}, step {batch + 1}; terms: "
                f"{terms}. Likely causes: a learning rate too high for this batch size or "
                "optimiser (lower train.lr, longer train.warmup_epochs, or train.clip_norm), "
                "float16 overflow (train.precision: mixed_bfloat16 or float32), or broken "
                "boxes in the data (python -m detector.data check). The run directory holds "
                "the state of the last completed epoch; fix the cause and --resume."
            )


def float32_config(config):
    """A model config with every layer's dtype policy replaced by float32.

    Under a mixed-precision policy the variables are float32 already, so weights copy
    over unchanged; the evaluation model and the checkpoints it writes compute in float32.
    """
    if isinstance(config, dict):
        return {k: "float32" if k == "dtype" else float32_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [float32_config(v) for v in config]
    return config


class BestCocoAP(keras.callbacks.Callback):
    """Evaluates COCO AP on a separate model and keeps the checkpoint with the best AP.

    At train begin it builds the evaluation model from the inference model's config
    (no custom_objects: every layer is registered). On evaluation epochs, and at the
    last epoch, it copies the inference weights in (the optimiser's EMA of them when
    it keeps one, so the training weights are never swapped), runs ``evaluate_model``
    and puts the 12 COCO numbers into ``logs`` (NaN on epochs without evaluation, so CSV
    columns stay fixed). On a new best AP it saves ``best.keras`` and ``best.json``
    atomically, and ``pr_curve.png``.

    Args:
        inference_model: keras.Model. The network being trained (shares its weights).
        dataset: Dataset. Validation split. coco_gt: its pycocotools ground truth.
        run_dir: str. Where best.keras / best.json go.
        is_eval_epoch: callable(int) -> bool. Whether a 1-based epoch is evaluated
            (``EvalConfig.is_eval_epoch``); the last epoch always is.
        best_ap: float. Best AP so far (a resumed run passes its own). Defaults to -1.
        patience: int. Stop training after this many evaluations without a better AP
            (0 = never). Defaults to 0.
        image_dir: str or None. TensorBoard log folder for a few validation images with
            their predicted boxes at each evaluation. Defaults to None (no images).
        predict_kwargs: batch_size, score_threshold, nms_iou, max_detections.
    """

    def __init__(
        self,
        inference_model,
        dataset,
        coco_gt,
        run_dir,
        is_eval_epoch,
        best_ap=-1.0,
        patience=0,
        image_dir=None,
        **predict_kwargs,
    ):
        super().__init__()
        self.inference_model = inference_model
        self.dataset = dataset
        self.coco_gt = coco_gt
        self.run_dir = run_dir
        self.is_eval_epoch = is_eval_epoch
        self.best_ap = best_ap
        self.patience = patience
        self.stale = 0
        self.early_stopped = False
        self.predict_kwargs = predict_kwargs
        self.image_dir = image_dir
        self.image_writer = None
        self.eval_model = None
        self.evaluated_epoch = None

    def on_train_begin(self, logs=None):
        config = float32_config(self.inference_model.get_config())
        self.eval_model = keras.Model.from_config(config)
        kwargs = {k: v for k, v in self.predict_kwargs.items() if k != "batch_size"}
        self.predict_fn = make_predict_fn(self.eval_model, **kwargs)
        if self.image_dir:
            import tensorflow as tf

            self.image_writer = tf.summary.create_file_writer(self.image_dir)

    def log_images(self, epoch: int, count: int = 4, min_score: float = 0.3) -> None:
        """The first `count` validation images with predictions above `min_score`."""
        import cv2
        import tensorflow as tf

        from detector.data.pipeline import make_eval_dataset

        head = self.eval_model.get_layer("yolo_head")
        # the whole split's dataset, first batch only (a packed split is read from its shards)
        ds = make_eval_dataset(self.dataset.records, head.input_size, count, head.letterbox)
        images, _ = next(iter(ds.take(1)))
        boxes, scores, classes, valid = (t.numpy() for t in self.predict_fn(images))
        drawn = []
        for i, image in enumerate(images.numpy().astype(np.uint8)):
            image = np.ascontiguousarray(image)
            for box, score, cls in zip(boxes[i, : valid[i]], scores[i], classes[i], strict=False):
                if score < min_score:
                    continue
                x1, y1, x2, y2 = (np.clip(box, 0, 1) * head.input_size).astype(int)
                cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), 1)
                label = f"{head.class_names[cls]} {score:.2f}"
                cv2.putText(image, label, (x1, max(y1 - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                            (255, 255, 0), 1)  # fmt: skip
            drawn.append(image)
        with self.image_writer.as_default():
            tf.summary.image("val_predictions", np.stack(drawn), step=epoch + 1, max_outputs=count)
        self.image_writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        last = getattr(self.model, "stop_training", False) or epoch + 1 == self.params.get("epochs")
        if not (self.is_eval_epoch(epoch + 1) or last):
            logs.update(dict.fromkeys(STAT_NAMES, math.nan))
            return
        curves = {}
        metrics = self.evaluate(curves)
        logs.update({name: metrics[name] for name in STAT_NAMES})
        self.evaluated_epoch = epoch
        if self.image_writer is not None:
            self.log_images(epoch)
        if metrics["AP"] > self.best_ap:
            self.best_ap = metrics["AP"]
            self.stale = 0
            self.save_best(epoch, metrics, curves)
        else:
            self.stale += 1
            if self.patience and self.stale >= self.patience:
                print(f"\nno better AP in {self.stale} evaluations: stopping (train.patience)")
                self.early_stopped = True
                self.model.stop_training = True

    def evaluate(self, curves=None) -> dict:
        """COCO metrics of the current (EMA) weights."""
        optimizer = getattr(self.model, "optimizer", None) if self.model is not None else None
        self.eval_model.set_weights(ema_weights(self.inference_model, optimizer))
        input_size = self.eval_model.get_layer("yolo_head").input_size
        metrics, _ = evaluate_model(
            self.eval_model, self.dataset, input_size, self.coco_gt, curves,
            batch_size=self.predict_kwargs.get("batch_size", 16), predict_fn=self.predict_fn,
        )  # fmt: skip
        return metrics

    def save_best(self, epoch: int, metrics: dict, curves: dict | None = None) -> None:
        path = os.path.join(self.run_dir, "best.keras")
        atomic_save(path, self.eval_model.save, suffix=".keras")
        write_json({"epoch": epoch + 1, **metrics}, os.path.join(self.run_dir, "best.json"))
        if curves:
            from detector.plots import plot_pr

            title = f"best model (epoch {epoch + 1}): precision-recall, class mean"
            plot_pr(curves, os.path.join(self.run_dir, "pr_curve.png"), title)


class TimeBudget(keras.callbacks.Callback):
    """Stops training cleanly once ``minutes`` of wall time have been spent: since
    ``start`` in this process, plus ``spent_before`` seconds by the run before a resume.

    With ``sync`` (a multi-worker run: ``Cluster.all_max``) every worker must stop at the
    same step and anneal the lr alike, so the share of the budget spent is agreed on (the
    largest over the workers) every ``sync_every`` batches and at epoch ends, and only
    the agreed value is acted on.
    """

    def __init__(
        self,
        minutes: float,
        start: float | None = None,
        spent_before: float = 0.0,
        sync=None,
        sync_every: int = 20,
    ):
        super().__init__()
        self.seconds = minutes * 60.0
        self.start = start if start is not None else time.monotonic()
        self.spent_before = spent_before
        self.stopped = False
        self.sync = sync
        self.sync_every = sync_every
        self.batches = 0
        self.agreed = 0.0

    def spent(self) -> float:
        """Seconds of the run so far, earlier sessions included."""
        return self.spent_before + time.monotonic() - self.start

    def fraction(self) -> float:
        """Share of the budget spent by this process's clock (0 when there is no budget)."""
        if self.seconds <= 0:
            return 0.0
        return self.spent() / self.seconds

    def on_train_begin(self, logs=None):
        if self.sync is not None and self.seconds > 0:  # a resumed run has spent some already
            self.agreed = self.sync(self.fraction())

    def shared_fraction(self) -> float:
        """The share every worker uses: the last agreed one, or this clock's alone."""
        return self.agreed if self.sync is not None else self.fraction()

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.sync is None or self.batches % self.sync_every == 0:
            self.check()

    def on_epoch_end(self, epoch, logs=None):
        # Runs before BestCocoAP (callback order), so a spent budget makes this epoch's
        # evaluation the final one instead of starting an epoch that stops at once.
        self.check()

    def check(self) -> None:
        if self.seconds <= 0:
            return
        fraction = self.fraction()
        if self.sync is not None:
            fraction = self.agreed = self.sync(fraction)
        if fraction >= 1.0:
            self.stopped = True
            self.model.stop_training = True


class ChiefOnly(keras.callbacks.Callback):
    """Multi-worker: the callbacks only the chief runs (evaluation, checkpoints, CSV).

    An exception in one of them must not leave the other workers waiting forever in the
    next all-reduce, so it is kept (`error`), the wrapped callbacks stop running, and
    training goes on to the epoch end, where `SyncStop` stops every worker; the caller
    then raises `error` on the chief.
    """

    def __init__(self, callbacks):
        super().__init__()
        self.callbacks = list(callbacks)
        self.error: Exception | None = None

    def set_model(self, model):
        super().set_model(model)
        for callback in self.callbacks:
            callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for callback in self.callbacks:
            callback.set_params(params)

    def _each(self, hook: str, *args) -> None:
        if self.error is not None:
            return
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(*args)
            except Exception as error:  # noqa: BLE001 (kept, raised after fit)
                self.error = error
                return

    def on_train_begin(self, logs=None):
        self._each("on_train_begin", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._each("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._each("on_epoch_end", epoch, logs)

    def on_train_end(self, logs=None):
        self._each("on_train_end", logs)


class SyncStop(keras.callbacks.Callback):
    """Multi-worker: at each epoch end, training stops on every worker if it stops on any
    (e.g. the chief's ``train.patience``), since a worker left alone would wait forever in
    the next step's all-reduce; and every worker aborts (`aborted`) if `failed()` is true
    on any (an error kept by `ChiefOnly`). Place it after the callbacks that may stop
    training."""

    def __init__(self, all_max, failed=lambda: False):
        super().__init__()
        self.all_max = all_max
        self.failed = failed
        self.aborted = False

    def on_epoch_end(self, epoch, logs=None):
        code = 2.0 if self.failed() else 1.0 if self.model.stop_training else 0.0
        code = self.all_max(code)
        self.aborted = code >= 2
        self.model.stop_training = code >= 1


class LearningRateSchedule(keras.callbacks.Callback):
    """darknet's burn-in, then cosine, step decay or constant; set before every batch.

    The step is the optimiser's iteration count, so a resumed run continues the schedule
    where it was. Cosine progress is the larger of steps done / total steps and the share
    of the wall-clock budget spent, so a ``--max-minutes`` run anneals fully by the time
    it stops.

    Args:
        base_lr: float. Peak learning rate.
        total_steps: int. Steps of the whole run (epochs × steps per epoch).
        warmup_steps: int. Burn-in length: lr · ((step + 1) / warmup_steps)^power.
        schedule: str. "cosine", "steps" or "constant".
        final_fraction: float. lr at the end of the cosine, as a fraction of base_lr.
        budget: TimeBudget or None.
        power: float. Burn-in exponent (darknet uses 4). Defaults to 4.
        decay_steps: list of int. For "steps": global steps at which lr is multiplied by
            `factor`.
        factor: float. Step-decay factor. Defaults to 0.1.
    """

    def __init__(
        self,
        base_lr,
        total_steps,
        warmup_steps,
        schedule="cosine",
        final_fraction=0.01,
        budget=None,
        power=4.0,
        decay_steps=(),
        factor=0.1,
    ):
        super().__init__()
        self.base_lr = base_lr
        self.total_steps = max(1, total_steps)
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.final_fraction = final_fraction
        self.budget = budget
        self.power = power
        self.decay_steps = sorted(decay_steps)
        self.factor = factor

    def lr_at(self, step: int, time_fraction: float = 0.0) -> float:
        """The learning rate at a global step (and share of the time budget spent)."""
        if step < self.warmup_steps:
            return self.base_lr * ((step + 1) / self.warmup_steps) ** self.power
        if self.schedule == "constant":
            return self.base_lr
        if self.schedule == "steps":
            passed = sum(step >= s for s in self.decay_steps)
            return self.base_lr * self.factor**passed
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(progress, time_fraction))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr * (self.final_fraction + (1.0 - self.final_fraction) * cosine)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        fraction = self.budget.shared_fraction() if self.budget else 0.0
        self.model.optimizer.learning_rate.assign(self.lr_at(step, fraction))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate.numpy())


class MetricsCSV(keras.callbacks.Callback):
    """Appends one row per epoch to a CSV with fixed columns (1-based ``epoch`` first).

    Unlike ``keras.callbacks.CSVLogger`` it writes no empty ``val_*`` columns, and
    the columns do not depend on which keys the first epoch happened to log.
    """

    def __init__(self, path: str, columns: list[str], plot_path: str | None = None):
        super().__init__()
        self.path = path
        self.columns = ["epoch", *columns]
        self.plot_path = plot_path

    def on_train_begin(self, logs=None):
        if not os.path.exists(self.path):
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)

    def on_epoch_end(self, epoch, logs=None):
        logs = {**(logs or {}), "epoch": epoch + 1}
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([logs.get(c, "") for c in self.columns])
            f.flush()
            os.fsync(f.fileno())
        evaluated = not math.isnan(float(logs.get("AP", math.nan)))
        if self.plot_path and evaluated:  # the curves follow every evaluation
            from detector.plots import plot_curves

            plot_curves(self.path, self.plot_path)
