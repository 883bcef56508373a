"""A YOLOv2-style object detector trained with TensorFlow 2 / Keras 3.

Importing the package registers every custom Keras layer and function (`detector.model.layers`,
`detector.model.loss`), so ``keras.models.load_model(path, safe_mode=True)`` loads a checkpoint
after ``import detector``; `Detector` is the prediction API (`detector.inference.detector`),
`Callback` the base of user callbacks that receive the detector's training events
(`detector.engine.callbacks.user`).
"""

from detector.engine.callbacks.user import Callback
from detector.inference.detector import Detector
from detector.inference.results import Result
from detector.model import layers, loss  # noqa: F401  (registers the custom Keras objects)

__all__ = ["Callback", "Detector", "Result"]
