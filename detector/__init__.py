"""A YOLOv2-style object detector trained with TensorFlow 2 / Keras 3.

Importing the package registers every custom Keras layer and function
(`detector.model.layers`, `detector.model.loss`), so ``keras.models.load_model(path,
safe_mode=True)`` loads a checkpoint after ``import detector``.

The Python API of every mode (`detector.api`, docs/python-api.md): ``detector.train``,
``detector.evaluate``, ``detector.export`` and `Detector` for prediction
(`detector.inference.detector`); `Callback` is the base of user callbacks that receive the
detector's training events (`detector.engine.callbacks.user`).

TensorFlow's native start-up lines (no CUDA driver, oneDNN) are held back while the
package starts it and summed up in the device report instead
(`detector.utils.native_log`; ``DETECTOR_VERBOSE=1`` shows them).
"""

from detector.utils.native_log import hold_native_stderr

with hold_native_stderr():  # the lines come from C++ at import and at the first device query
    import tensorflow as _tf

    _tf.config.list_physical_devices("GPU")

from detector import export  # noqa: E402  (a callable subpackage: detector.export(checkpoint, format))
from detector.api import (  # noqa: E402
    ConfigError,
    DetectorError,
    Report,
    TrainingError,
    TrainResult,
    evaluate,
    train,
)
from detector.engine.callbacks.user import Callback  # noqa: E402
from detector.inference.detector import Detector  # noqa: E402
from detector.inference.results import Result  # noqa: E402
from detector.model import layers, loss  # noqa: E402, F401  (registers the custom Keras objects)

__all__ = [
    "Callback",
    "ConfigError",
    "Detector",
    "DetectorError",
    "Report",
    "Result",
    "TrainResult",
    "TrainingError",
    "evaluate",
    "export",
    "train",
]
