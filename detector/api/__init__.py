"""The Python API of every mode: ``detector.train``, ``detector.evaluate``,
``detector.export`` (and `detector.Detector` for prediction). The command lines are thin
callers of it; its errors are typed (`errors`) with the command lines' messages."""

from detector.api.errors import ConfigError, DetectorError, TrainingError
from detector.api.evaluate import Report, evaluate

__all__ = ["ConfigError", "DetectorError", "Report", "TrainingError", "evaluate"]
