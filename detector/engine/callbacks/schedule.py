"""The callbacks of time: the wall-clock budget (`TimeBudget`, which tells the lr schedule
how much of it is spent) and the lr in the logs (`LearningRateCallback`). The schedule
itself is `detector.engine.schedule.DarknetSchedule`."""

import time

import keras
from keras import ops

from detector.engine.schedule import DarknetSchedule


class TimeBudget(keras.callbacks.Callback):
    """Stops training cleanly once ``minutes`` of wall time have been spent: since
    ``start`` in this process, plus ``spent_before`` seconds by the run before a resume;
    and tells the lr schedule how much of the budget is spent (`share`).

    With ``sync`` (a multi-worker run: ``Cluster.all_max``) every worker must stop at the
    same step and anneal the lr alike, so the share of the budget spent is agreed on (the
    largest over the workers) every ``sync_every`` batches and at epoch ends, and only
    the agreed value is acted on. Without it the clock is read after every batch (a host
    clock, no device sync) and the share is written every ``sync_every`` batches.

    Args:
        minutes: float. The budget; 0 = none.
        start: float or None. ``time.monotonic()`` at the start of this process's run.
            Defaults to now.
        spent_before: float. Seconds spent by earlier sessions of the run. Defaults to 0.
        sync: callable(float) -> float or None. The all-worker maximum. Defaults to None.
        sync_every: int. Batches (callback calls: executions of
            ``steps_per_execution`` steps) between agreements and writes. Defaults to 20.
        share: variable or None. Written with the agreed share of the budget spent (the
            schedule's ``time_fraction``). Defaults to None.
    """

    def __init__(
        self,
        minutes: float,
        start: float | None = None,
        spent_before: float = 0.0,
        sync=None,
        sync_every: int = 20,
        share=None,
    ):
        super().__init__()
        self.seconds = minutes * 60.0
        self.start = start if start is not None else time.monotonic()
        self.spent_before = spent_before
        self.stopped = False
        self.sync = sync
        self.sync_every = sync_every
        self.share = share
        self.batches = 0
        self.agreed = 0.0

    def spent(self) -> float:
        """Seconds of the run so far, earlier sessions included."""
        return self.spent_before + time.monotonic() - self.start

    def fraction(self) -> float:
        """Share of the budget spent by this process's clock (0 when there is no budget)."""
        if self.seconds <= 0:
            return 0.0
        return self.spent() / self.seconds

    def on_train_begin(self, logs=None):
        if self.sync is not None and self.seconds > 0:  # a resumed run has spent some already
            self.agreed = self.sync(self.fraction())
        self.publish()

    def shared_fraction(self) -> float:
        """The share every worker uses: the last agreed one, or this clock's alone."""
        return self.agreed if self.sync is not None else self.fraction()

    def publish(self) -> None:
        """Writes the shared fraction into `share` (read by the schedule in the step)."""
        if self.share is not None and self.seconds > 0:
            self.share.assign(min(1.0, self.shared_fraction()))

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        due = self.batches % self.sync_every == 0
        if self.sync is None or due:
            self.check()
        if due:
            self.publish()

    def on_epoch_end(self, epoch, logs=None):
        # Placed before BestCocoAP (see build.make_callbacks), so a spent budget makes this
        # epoch's evaluation the final one instead of starting an epoch that stops at once.
        self.check()
        self.publish()

    def check(self) -> None:
        if self.seconds <= 0:
            return
        fraction = self.fraction()
        if self.sync is not None:
            fraction = self.agreed = self.sync(fraction)
        if fraction >= 1.0:
            self.stopped = True
            self.model.stop_training = True


class LearningRateCallback(keras.callbacks.Callback):
    """Puts the learning rate of the epoch's last step into ``logs["lr"]`` at the epoch
    end (progress bar, CSV, TensorBoard): one read of `schedule` per epoch, none per batch.

    Args:
        schedule: DarknetSchedule. The optimiser's learning rate.
    """

    def __init__(self, schedule: DarknetSchedule):
        super().__init__()
        self.schedule = schedule
        self.checked = False

    def on_epoch_begin(self, epoch, logs=None):
        # A resumed run (first epoch > 0) whose optimiser restarted at step 0: Keras only
        # warns when a saved optimiser's variables do not match (e.g. a state saved before
        # the lr became a schedule, with an lr variable), and the schedule would restart.
        if not self.checked and epoch > 0 and int(self.model.optimizer.iterations.numpy()) == 0:
            raise ValueError(
                f"the run's state (epoch {epoch}) did not restore the optimiser: its "
                "optimiser variables do not match this version's (saved by an older one?); "
                "the learning-rate schedule would restart at step 0. Resume with the "
                "version that started the run, or start a new run"
            )
        self.checked = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            step = max(0, int(self.model.optimizer.iterations.numpy()) - 1)
            logs["lr"] = float(ops.convert_to_numpy(self.schedule(step)))
