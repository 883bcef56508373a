"""The user's callbacks: `Callback` (``detector.Callback``), its events, and the
``train.callbacks`` entries of a config turned into callbacks.

Any ``keras.callbacks.Callback`` can be given (``run(cfg, callbacks=[...])`` or
``train.callbacks`` in the YAML); a `Callback` also receives the detector's events, which a
plain Keras callback cannot see. Where they sit among the built-in callbacks is listed in
``detector.engine.callbacks``: after the evaluation, lr and metrics.csv
callbacks, so ``logs`` hold the epoch's ``lr`` and COCO numbers (NaN on epochs without an
evaluation), and before the run state is saved. With ``eval.async`` their
``on_epoch_end`` is held back, as metrics.csv's is, until the epoch's AP is known (at the
latest at the next epoch end). Under several workers they run on the chief only.
"""

import csv
import dataclasses
import importlib
import math
import os

import keras

from detector.engine.callbacks.listeners import EvalListener, Evaluation


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a finished run leaves (`Callback.on_run_end`).

    Attributes:
        run_dir: str. The run directory.
        best_path: str. ``RUN_DIR/best.keras``. last_path: str. ``RUN_DIR/last.keras``.
        best_metrics: dict. The COCO metrics of best.keras on the val split (the final
            report's).
        history: list of dict. One per epoch row of metrics.csv, earlier sessions of a
            resumed run included: ``epoch`` (1-based int), then floats (NaN: no value).
    """

    run_dir: str
    best_path: str
    last_path: str
    best_metrics: dict
    history: list


class Callback(keras.callbacks.Callback):
    """A Keras callback that also receives the detector's events; override what you need.

    Every event runs in the training thread, on the chief only. Epochs are 0-based, as in
    Keras' ``on_epoch_end``; an evaluated epoch's ``on_eval_end`` comes before that epoch's
    ``on_epoch_end``. Example::

        class PrintAP(detector.Callback):
            def on_eval_end(self, epoch, metrics, is_best):
                print(epoch + 1, metrics["AP"], "best" if is_best else "")
    """

    def on_eval_end(self, epoch: int, metrics: dict, is_best: bool) -> None:
        """Once per evaluated epoch, in epoch order, when its COCO metrics are known: at
        its end, or with ``eval.async`` when its evaluation lands (the next epoch end, the
        end of training, or on the way out of an interrupted run).

        Args:
            epoch: int. 0-based. metrics: dict. The 12 COCO numbers (``AP``, ``AP50``...)
                and ``per_class``. is_best: bool. Whether it is saved as best.keras.
        """

    def on_checkpoint(self, path: str, kind: str) -> None:
        """After a checkpoint is written (atomically): `kind` "best" (after that epoch's
        ``on_eval_end``) or "last" (every epoch end)."""

    def on_run_end(self, result: RunResult) -> None:
        """Once, after training and the final report of best.keras (not when training
        stopped on an error)."""

    def on_run_failed(self, error: BaseException) -> None:
        """Once, instead of `on_run_end`, when training, the final report or an
        ``on_run_end`` raised `error` (``KeyboardInterrupt`` for Ctrl-C) after training
        began; the error then leaves ``run``. An error raised here is printed, not raised."""


class UserEvents(EvalListener):
    """Hands the detector's events to the `Callback` instances among `callbacks`: a part
    of `BestCocoAP` (its evaluations, when they land in the training thread), `SaveLast`'s
    ``on_saved`` and the run's end.
    """

    def __init__(self, callbacks):
        self.callbacks = [c for c in callbacks if isinstance(c, Callback)]

    def on_landed(self, evaluation: Evaluation) -> None:
        for callback in self.callbacks:
            callback.on_eval_end(evaluation.epoch, dict(evaluation.metrics), evaluation.is_best)
        if evaluation.checkpoint:
            self.on_checkpoint(evaluation.checkpoint, "best")

    def on_checkpoint(self, path: str, kind: str) -> None:
        for callback in self.callbacks:
            callback.on_checkpoint(path, kind)

    def on_run_end(self, result: RunResult) -> None:
        for callback in self.callbacks:
            callback.on_run_end(result)

    def on_run_failed(self, error: BaseException) -> None:
        """Tells every callback; their own errors are printed, so `error` stays the one
        that leaves the run."""
        for callback in self.callbacks:
            try:
                callback.on_run_failed(error)
            except Exception as own:  # noqa: BLE001 (reported, the run's error goes on)
                name = type(callback).__name__
                print(f"warning: {name}.on_run_failed: {type(own).__name__}: {own}")


def read_history(path: str) -> list[dict]:
    """The rows of a metrics.csv as dicts: ``epoch`` an int, the rest floats (NaN for
    an empty cell)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        {k: int(v) if k == "epoch" else (float(v) if v else math.nan) for k, v in row.items()}
        for row in rows
    ]


def run_result(run_dir: str, best_metrics: dict) -> RunResult:
    """The `RunResult` of the run in `run_dir`."""
    return RunResult(
        run_dir=run_dir,
        best_path=os.path.join(run_dir, "best.keras"),
        last_path=os.path.join(run_dir, "last.keras"),
        best_metrics=best_metrics,
        history=read_history(os.path.join(run_dir, "metrics.csv")),
    )


def load_callbacks(entries) -> list[keras.callbacks.Callback]:
    """The callbacks of ``train.callbacks``: each entry ``"module:Class"`` or
    ``{"class": "module:Class", "args": {...}}`` (keyword arguments), imported only here.

    Raises:
        ValueError: an entry cannot be imported, is not a Keras callback class, or its
            constructor fails; the message names the entry (``train.callbacks[i]``).
    """
    return [_load(i, entry) for i, entry in enumerate(entries)]


def _load(index: int, entry) -> keras.callbacks.Callback:
    where = f"train.callbacks[{index}]"
    name, args = (entry, {}) if isinstance(entry, str) else (entry["class"], entry.get("args"))
    module, _, attribute = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{where}: cannot import {name!r}: {error}") from None
    except Exception as error:  # noqa: BLE001 (the module's own error, e.g. a SyntaxError)
        raise ValueError(
            f"{where}: cannot import {name!r}: {type(error).__name__}: {error}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, keras.callbacks.Callback)):
        raise ValueError(f"{where}: {name!r} is not a keras.callbacks.Callback class")
    try:
        return cls(**(args or {}))
    except Exception as error:  # noqa: BLE001 (reported naming the entry)
        raise ValueError(
            f"{where}: cannot create {name!r} with args {args or {}}: "
            f"{type(error).__name__}: {error}"
        ) from None
