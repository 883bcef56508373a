"""`Group`: a callback that hands every hook on to the callbacks it holds, in order; the
base of `ChiefOnly` (distribute.py) and `LateLogs` (logs.py)."""

import keras


class Group(keras.callbacks.Callback):
    """Passes ``set_model``, ``set_params`` and the training hooks on to `callbacks` in
    order (`_each`; a subclass changes how, or holds a hook back).

    Args:
        callbacks: list of keras Callback. Defaults to none yet.
    """

    def __init__(self, callbacks: list | None = None):
        super().__init__()
        self.callbacks = list(callbacks or [])

    def _each(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def set_model(self, model):
        super().set_model(model)
        for callback in self.callbacks:
            callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for callback in self.callbacks:
            callback.set_params(params)

    def on_train_begin(self, logs=None):
        self._each("on_train_begin", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._each("on_epoch_begin", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._each("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._each("on_train_batch_end", batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._each("on_epoch_end", epoch, logs)

    def on_train_end(self, logs=None):
        self._each("on_train_end", logs)
