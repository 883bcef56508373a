"""Experiment trackers (``train.loggers``): `Tracker`, the part MLflow and Weights & Biases
share, and `require`, the check that their packages import.

A tracker is a `detector.Callback` appended to the user's callbacks (chief only, after
metrics.csv; ``build.make_callbacks``). It opens its run in ``on_train_begin`` (never in
``__init__``), logs each epoch's ``logs`` (the metrics.csv columns: lr, loss and its terms,
the COCO numbers; NaN skipped) at step = the 1-based epoch, as metrics.csv numbers it, and
ends its run in ``on_run_end`` (finished, after uploading the run's results) or
``on_run_failed`` (failed; killed for Ctrl-C). The packages are imported only when listed.
A resumed run goes on in the tracker's run of the first session: its id is kept in
``RUN_DIR/trackers.json``.
"""

import importlib
import json
import math
import os

from detector.engine.callbacks.user import Callback, RunResult
from detector.utils.atomic import atomic_write_json

IDS_FILE = "trackers.json"


def require(loggers: list[str]) -> None:
    """Imports the package of every tracker in `loggers` (``train.loggers``).

    Raises:
        ValueError: one is missing (the message names the extra to install) or fails to
            import.
    """
    for name in loggers:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ValueError(
                f'train.loggers: {name} is not installed; pip install "detector[{name}]"'
            ) from None
        except Exception as error:  # noqa: BLE001 (a broken install, named)
            raise ValueError(
                f"train.loggers: {name} cannot be imported: {type(error).__name__}: {error}"
            ) from None


def default_project(run_dir: str) -> str:
    """The name of `run_dir`'s parent folder as given (``runs/exp`` → ``runs``), else
    ``detector``."""
    parent = os.path.basename(os.path.dirname(os.path.normpath(run_dir)))
    return parent if parent not in ("", ".", "..") else "detector"


def epoch_values(logs: dict | None, columns: list[str]) -> dict[str, float]:
    """The finite numbers of `logs` among `columns`, as floats."""
    values = {}
    for key in columns:
        value = (logs or {}).get(key)
        if value is not None and math.isfinite(float(value)):
            values[key] = float(value)
    return values


def numbers(metrics: dict) -> dict[str, float]:
    """The finite scalar numbers of a metrics dict (``per_class`` and the like dropped)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


class Tracker(Callback):
    """The common part of an experiment tracker; a subclass implements `open`, `log`,
    `upload` and `close`.

    Args:
        run_dir: str. The run directory (the run's name is its base name).
        config: dict. The resolved config, {section: {key: value}}.
        columns: list of str. The keys of the epoch logs to log (metrics.csv's columns).
        project: str. The experiment / project; "" = the package's environment variable
            (`env_project`), else `default_project`. Defaults to "".
        resume: bool. Whether the run directory is resumed (its tracker run goes on).
            Defaults to False.
    """

    key = ""  # the tracker's name in train.loggers and trackers.json
    env_project = ""  # the package's environment variable naming the project

    def __init__(self, *, run_dir: str, config: dict, columns: list[str], project="", resume=False):
        super().__init__()
        self.run_dir, self.config, self.columns, self.resume = run_dir, config, columns, resume
        self.project = project
        self.name = os.path.basename(os.path.normpath(run_dir))
        self.is_open = False

    def project_name(self) -> str:
        return self.project or os.environ.get(self.env_project) or default_project(self.run_dir)

    def on_train_begin(self, logs=None):
        if not self.is_open:
            self.open(self.saved_id() if self.resume else None)
            self.is_open = True

    def on_epoch_end(self, epoch, logs=None):
        values = epoch_values(logs, self.columns)
        if values:
            self.log(values, epoch + 1)

    def on_run_end(self, result: RunResult) -> None:
        if self.is_open:  # an error in upload leaves it open: on_run_failed closes it
            self.upload(result)
            self.is_open = False
            self.close("FINISHED")

    def on_run_failed(self, error: BaseException) -> None:
        if self.is_open:
            self.is_open = False
            self.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def saved_id(self) -> str | None:
        """This tracker's run id kept in ``RUN_DIR/trackers.json`` by an earlier session."""
        path = os.path.join(self.run_dir, IDS_FILE)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f).get(self.key)

    def save_id(self, run_id: str) -> None:
        """Keeps `run_id` in ``RUN_DIR/trackers.json``, for a resume."""
        path = os.path.join(self.run_dir, IDS_FILE)
        ids = {}
        if os.path.isfile(path):
            with open(path) as f:
                ids = json.load(f)
        atomic_write_json(path, {**ids, self.key: run_id})

    def open(self, run_id: str | None) -> None:
        """Opens the tracker's run: the one of `run_id` (a resume) or a new one."""
        raise NotImplementedError

    def log(self, values: dict[str, float], step: int) -> None:
        """Logs one epoch's `values` at `step` (the 1-based epoch)."""
        raise NotImplementedError

    def upload(self, result: RunResult) -> None:
        """At the run's end: the best metrics and what the run wrote."""
        raise NotImplementedError

    def close(self, status: str) -> None:
        """Ends the run with `status`: FINISHED, FAILED or KILLED."""
        raise NotImplementedError
