"""The epoch loggers: metrics.csv (with its curves) and, for ``eval.async``, the wrapper
that holds each epoch's logs back until its COCO numbers are known. TensorBoard is Keras'
own (``build.make_callbacks``)."""

import csv
import math
import os

import keras

from detector.engine.callbacks.group import Group


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


class LateLogs(Group):
    """The epoch loggers of an ``eval.async`` run (metrics.csv, TensorBoard): every hook
    reaches them at once except ``on_epoch_end``, which reaches them in epoch order once
    `best` knows the epoch's COCO numbers, merged into that epoch's logs. So a row always
    holds its own epoch's AP, as without ``eval.async``; it is written at the latest at
    the next epoch end (the end of training for the last one).

    Args:
        best: BestCocoAP. Its ``logged`` maps each finished epoch to its numbers.
        callbacks: list of keras Callback. The loggers. Defaults to none yet.
    """

    def __init__(self, best, callbacks: list | None = None):
        super().__init__(callbacks)
        self.best = best
        self.queue: list[tuple[int, dict]] = []

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
