"""Training callbacks: best-COCO-AP checkpointing, the wall-clock budget, the lr schedule."""

import csv
import math
import os
import time

import keras

from detector.evaluation import STAT_NAMES, evaluate_model, make_predict_fn, write_json
from detector.io import atomic_save


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
    last epoch, it copies the inference weights in, runs
    ``evaluate_model`` and puts the 12 COCO numbers into ``logs`` (NaN on epochs
    without evaluation, so CSV columns stay fixed). On a new best AP it saves
    ``best.keras`` and ``best.json`` atomically.

    Args:
        inference_model: keras.Model. The network being trained (shares its weights).
        dataset: Dataset. Validation split. coco_gt: its pycocotools ground truth.
        run_dir: str. Where best.keras / best.json go.
        is_eval_epoch: callable(int) -> bool. Whether a 1-based epoch is evaluated
            (``EvalConfig.is_eval_epoch``); the last epoch always is.
        best_ap: float. Best AP so far (a resumed run passes its own). Defaults to -1.
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
        **predict_kwargs,
    ):
        super().__init__()
        self.inference_model = inference_model
        self.dataset = dataset
        self.coco_gt = coco_gt
        self.run_dir = run_dir
        self.is_eval_epoch = is_eval_epoch
        self.best_ap = best_ap
        self.predict_kwargs = predict_kwargs
        self.eval_model = None
        self.evaluated_epoch = None

    def on_train_begin(self, logs=None):
        config = float32_config(self.inference_model.get_config())
        self.eval_model = keras.Model.from_config(config)
        kwargs = {k: v for k, v in self.predict_kwargs.items() if k != "batch_size"}
        self.predict_fn = make_predict_fn(self.eval_model, **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        last = getattr(self.model, "stop_training", False) or epoch + 1 == self.params.get("epochs")
        if not (self.is_eval_epoch(epoch + 1) or last):
            logs.update(dict.fromkeys(STAT_NAMES, math.nan))
            return
        metrics = self.evaluate()
        logs.update({name: metrics[name] for name in STAT_NAMES})
        self.evaluated_epoch = epoch
        if metrics["AP"] > self.best_ap:
            self.best_ap = metrics["AP"]
            self.save_best(epoch, metrics)

    def evaluate(self) -> dict:
        """COCO metrics of the current weights."""
        self.eval_model.set_weights(self.inference_model.get_weights())
        input_size = self.eval_model.get_layer("yolo_head").input_size
        metrics, _ = evaluate_model(
            self.eval_model, self.dataset, input_size, self.coco_gt,
            batch_size=self.predict_kwargs.get("batch_size", 16), predict_fn=self.predict_fn,
        )  # fmt: skip
        return metrics

    def save_best(self, epoch: int, metrics: dict) -> None:
        path = os.path.join(self.run_dir, "best.keras")
        atomic_save(path, self.eval_model.save, suffix=".keras")
        write_json({"epoch": epoch + 1, **metrics}, os.path.join(self.run_dir, "best.json"))


class TimeBudget(keras.callbacks.Callback):
    """Stops training cleanly once ``minutes`` of wall time have passed since ``start``."""

    def __init__(self, minutes: float, start: float | None = None):
        super().__init__()
        self.seconds = minutes * 60.0
        self.start = start if start is not None else time.monotonic()
        self.stopped = False

    def fraction(self) -> float:
        """Share of the budget spent (0 when there is no budget)."""
        if self.seconds <= 0:
            return 0.0
        return (time.monotonic() - self.start) / self.seconds

    def on_train_batch_end(self, batch, logs=None):
        self.check()

    def on_epoch_end(self, epoch, logs=None):
        # Runs before BestCocoAP (callback order), so a spent budget makes this epoch's
        # evaluation the final one instead of starting an epoch that stops at once.
        self.check()

    def check(self) -> None:
        if self.seconds > 0 and self.fraction() >= 1.0:
            self.stopped = True
            self.model.stop_training = True


class LearningRateSchedule(keras.callbacks.Callback):
    """Warm-up then cosine (or constant) learning rate, set before every batch.

    Progress is the larger of steps done / total steps and the share of the wall-clock
    budget spent, so a ``--max-minutes`` run anneals fully by the time it stops.

    Args:
        base_lr: float. Peak learning rate.
        total_steps: int. Steps of the whole run (epochs × steps per epoch).
        warmup_steps: int. Burn-in length: lr · (step / warmup_steps)^power.
        schedule: str. "cosine" or "constant".
        final_fraction: float. lr at the end of the cosine, as a fraction of base_lr.
        budget: TimeBudget or None.
        power: float. Burn-in exponent (darknet uses 4). Defaults to 2.
    """

    def __init__(
        self,
        base_lr,
        total_steps,
        warmup_steps,
        schedule="cosine",
        final_fraction=0.01,
        budget=None,
        power=2.0,
    ):
        super().__init__()
        self.base_lr = base_lr
        self.total_steps = max(1, total_steps)
        self.warmup_steps = warmup_steps
        self.schedule = schedule
        self.final_fraction = final_fraction
        self.budget = budget
        self.power = power

    def lr_at(self, step: int, time_fraction: float = 0.0) -> float:
        """The learning rate at a global step (and share of the time budget spent)."""
        if step < self.warmup_steps:
            return self.base_lr * ((step + 1) / self.warmup_steps) ** self.power
        if self.schedule == "constant":
            return self.base_lr
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(progress, time_fraction))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr * (self.final_fraction + (1.0 - self.final_fraction) * cosine)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        fraction = self.budget.fraction() if self.budget else 0.0
        self.model.optimizer.learning_rate.assign(self.lr_at(step, fraction))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate.numpy())


class MetricsCSV(keras.callbacks.Callback):
    """Appends one row per epoch to a CSV with fixed columns (1-based ``epoch`` first).

    Unlike ``keras.callbacks.CSVLogger`` it writes no empty ``val_*`` columns, and
    the columns do not depend on which keys the first epoch happened to log.
    """

    def __init__(self, path: str, columns: list[str]):
        super().__init__()
        self.path = path
        self.columns = ["epoch", *columns]

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
