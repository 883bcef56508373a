"""Training monitors: the NaN guard and the metrics CSV (with its curves).

Checkpoints are in `detector.engine.callbacks.checkpoints`, the time budget and lr schedule in
`detector.engine.schedule`, the multi-worker callbacks in `detector.engine.distribute`.
"""

import csv
import math
import os

import keras


class NonFiniteLoss(RuntimeError):
    """Raised by `NonFiniteGuard`: training stops before the bad step reaches any state."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops the run at the first NaN/Inf loss, naming the epoch and step.

    It raises (instead of setting ``stop_training``) so that no epoch-end callback runs:
    the resume state and checkpoints stay those of the last good epoch. Keras calls it
    once per execution of ``steps_per_execution`` steps (reading the loss is the one host
    sync of an execution), so it names the execution's steps; the logged loss is the
    epoch's running mean, so a non-finite step stays visible at the execution's end.
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
            first = batch + 2 - getattr(self.model, "steps_per_execution", 1)
            steps = f"step {batch + 1}" if first > batch else f"steps {first}-{batch + 1}"
            raise NonFiniteLoss(
                f"non-finite loss ({loss}) at epoch {self.epoch + 1}, {steps}; terms: "
                f"{terms}. Likely causes: a learning rate too high for this batch size or "
                "optimiser (lower train.lr, longer train.warmup_epochs, or train.clip_norm), "
                "float16 overflow (train.precision: mixed_bfloat16 or float32), or broken "
                "boxes in the data (python -m detector.data check). The run directory holds "
                "the state of the last completed epoch; fix the cause and --resume."
            )


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
            from detector.evaluation.training_plots import plot_curves

            plot_curves(self.path, self.plot_path)
