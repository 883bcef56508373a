"""The Python API of every mode: ``detector.train``, ``detector.evaluate``,
``detector.export`` (and `detector.Detector` for prediction). The command lines are thin
callers of it; its errors are typed (`detector.utils.errors`) with the command lines'
messages."""

from detector.api.evaluate import Report, evaluate
from detector.api.train import TrainResult, train
from detector.utils.errors import ConfigError, DetectorError, TrainingError

__all__ = [
    "ConfigError",
    "DetectorError",
    "Report",
    "TrainResult",
    "TrainingError",
    "evaluate",
    "train",
]
