"""Mosaic and mixup closed for the last part of a run (``train.close_mosaic`` < 1)."""

import keras

from detector.data.mosaic import MosaicSwitch


class CloseMosaic(keras.callbacks.Callback):
    """Closes `switch` once `budget` (a ``TimeBudget``) has spent ``1 - fraction`` of
    itself, checked after every batch, or once ``1 - fraction`` of the `epochs` are done
    when they end the run first (as the lr schedule anneals by the earlier of the two);
    batches already prefetched keep their mosaics.

    Args:
        switch: MosaicSwitch. budget: TimeBudget (its agreed share on multi-worker runs).
        fraction: float in (0, 1). The last share of the budget without mosaic.
        epochs: int or None. The run's ``train.epochs``. Defaults to None (budget only).
    """

    def __init__(self, switch: MosaicSwitch, budget, fraction: float, epochs: int | None = None):
        super().__init__()
        self.switch, self.budget, self.fraction, self.epochs = switch, budget, fraction, epochs

    def on_train_begin(self, logs=None):
        self.on_train_batch_end(0)

    def on_epoch_begin(self, epoch, logs=None):  # `epoch`: the epochs done (resume too)
        if self.epochs and epoch >= (1.0 - self.fraction) * self.epochs:
            self.switch.close()

    def on_train_batch_end(self, batch, logs=None):
        if self.budget.shared_fraction() >= 1.0 - self.fraction:
            self.switch.close()
