"""A YOLOv2-style object detector trained with TensorFlow 2 / Keras 3.

Importing the package registers every custom Keras layer and function (`detector.layers`,
`detector.loss`), so ``keras.models.load_model(path, safe_mode=True)`` loads a checkpoint
after ``import detector``; `Detector` is the prediction API (`detector.predict`).
"""

from detector import layers, loss  # noqa: F401  (registers the custom Keras objects)
from detector.predict import Detector
from detector.results import Result

__all__ = ["Detector", "Result"]
