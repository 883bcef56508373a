"""The last checkpoint: ``last.keras`` at every epoch end (the best one is `KeepBest`'s)."""

import keras

from detector.engine.eval_copy import EvalCopy
from detector.utils.atomic import atomic_save


class SaveLast(keras.callbacks.Callback):
    """Saves the evaluation copy (float32, the EMA weights when there are) to
    ``last.keras`` atomically at every epoch end.

    Args:
        eval_copy: EvalCopy. Of the network being trained (the one `BestCocoAP` uses).
        path: str. The checkpoint file.
        on_saved: callable(path, kind) or None. Called after each save with ``"last"``
            (the user callbacks' ``on_checkpoint``). Defaults to None.
    """

    def __init__(self, eval_copy: EvalCopy, path: str, on_saved=None):
        super().__init__()
        self.eval_copy = eval_copy
        self.path = path
        self.on_saved = on_saved

    def on_epoch_end(self, epoch, logs=None):
        model = self.eval_copy.sync(self.model.optimizer)
        atomic_save(self.path, model.save, suffix=".keras")
        if self.on_saved is not None:
            self.on_saved(self.path, "last")
