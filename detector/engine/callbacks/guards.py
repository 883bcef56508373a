"""The NaN guard: a non-finite loss stops the run before the bad step reaches any state."""

import math

import keras


class NonFiniteLoss(RuntimeError):
    """Raised by `NonFiniteGuard`: training stops before the bad step reaches any state."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops the run at the first NaN/Inf loss, naming the epoch and step.

    It raises (instead of setting ``stop_training``) so that no epoch-end callback runs:
    the resume state and checkpoints stay those of the last good epoch. Keras calls it
    once per execution of ``steps_per_execution`` steps (reading the loss is the one host
    sync of an execution), so it names the execution's steps; the logged loss is the
    epoch's running mean, so a non-finite step stays visible at the execution's end.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            terms = {k: float(v) for k, v in (logs or {}).items() if k != "loss"}
            first = batch + 2 - getattr(self.model, "steps_per_execution", 1)
            steps = f"step {batch + 1}" if first > batch else f"steps {first}-{batch + 1}"
            raise NonFiniteLoss(
                f"non-finite loss ({loss}) at epoch {self.epoch + 1}, {steps}; terms: "
                f"{terms}. Likely causes: a learning rate too high for this batch size or "
                "optimiser (lower train.lr, longer train.warmup_epochs, or train.clip_norm), "
                "float16 overflow (train.precision: mixed_bfloat16 or float32), or broken "
                "boxes in the data (python -m detector.data check). The run directory holds "
                "the state of the last completed epoch; fix the cause and --resume."
            )
