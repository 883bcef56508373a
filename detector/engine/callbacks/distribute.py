"""The multi-worker callbacks: `ChiefOnly` (the chief's own callbacks, whose errors must
not strand the other workers) and `SyncStop` (every worker stops when one does). The
cluster itself is `detector.engine.distribute.Cluster`."""

import keras

from detector.engine.callbacks.group import Group


class ChiefOnly(Group):
    """Multi-worker: the callbacks only the chief runs (evaluation, checkpoints, CSV, the
    user's callbacks).

    An exception in one of them must not leave the other workers waiting forever in the
    next all-reduce, so it is kept (`error`), the wrapped callbacks stop running, and
    training goes on to the epoch end, where `SyncStop` stops every worker; the caller
    then raises `error` on the chief.
    """

    def __init__(self, callbacks):
        super().__init__(callbacks)
        self.error: Exception | None = None

    def _each(self, hook: str, *args) -> None:
        if self.error is not None:
            return
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(*args)
            except Exception as error:  # noqa: BLE001 (kept, raised after fit)
                self.error = error
                return


class SyncStop(keras.callbacks.Callback):
    """Multi-worker: at each epoch end, training stops on every worker if it stops on any
    (e.g. the chief's ``train.patience``), since a worker left alone would wait forever in
    the next step's all-reduce; and every worker aborts (`aborted`) if `failed()` is true
    on any (an error kept by `ChiefOnly`). Place it after the callbacks that may stop
    training."""

    def __init__(self, all_max, failed=lambda: False):
        super().__init__()
        self.all_max = all_max
        self.failed = failed
        self.aborted = False

    def on_epoch_end(self, epoch, logs=None):
        code = 2.0 if self.failed() else 1.0 if self.model.stop_training else 0.0
        code = self.all_max(code)
        self.aborted = code >= 2
        self.model.stop_training = code >= 1
