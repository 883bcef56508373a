"""Time in a run: the wall-clock budget and the learning-rate schedule that follows it.

`TimeBudget` stops training once the budget is spent; `LearningRateCallback` sets darknet's
burn-in then cosine / step / constant learning rate before every batch, annealing by
whichever ends first, the steps or the budget.
"""

import math
import time

import keras


class TimeBudget(keras.callbacks.Callback):
    """Stops training cleanly once ``minutes`` of wall time have been spent: since
    ``start`` in this process, plus ``spent_before`` seconds by the run before a resume.

    With ``sync`` (a multi-worker run: ``Cluster.all_max``) every worker must stop at the
    same step and anneal the lr alike, so the share of the budget spent is agreed on (the
    largest over the workers) every ``sync_every`` batches and at epoch ends, and only
    the agreed value is acted on.

    Args:
        minutes: float. The budget; 0 = none.
        start: float or None. ``time.monotonic()`` at the start of this process's run.
            Defaults to now.
        spent_before: float. Seconds spent by earlier sessions of the run. Defaults to 0.
        sync: callable(float) -> float or None. The all-worker maximum. Defaults to None.
        sync_every: int. Batches between agreements. Defaults to 20.
    """

    def __init__(
        self,
        minutes: float,
        start: float | None = None,
        spent_before: float = 0.0,
        sync=None,
        sync_every: int = 20,
    ):
        super().__init__()
        self.seconds = minutes * 60.0
        self.start = start if start is not None else time.monotonic()
        self.spent_before = spent_before
        self.stopped = False
        self.sync = sync
        self.sync_every = sync_every
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

    def shared_fraction(self) -> float:
        """The share every worker uses: the last agreed one, or this clock's alone."""
        return self.agreed if self.sync is not None else self.fraction()

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.sync is None or self.batches % self.sync_every == 0:
            self.check()

    def on_epoch_end(self, epoch, logs=None):
        # Placed before BestCocoAP (see build.make_callbacks), so a spent budget makes this
        # epoch's evaluation the final one instead of starting an epoch that stops at once.
        self.check()

    def check(self) -> None:
        if self.seconds <= 0:
            return
        fraction = self.fraction()
        if self.sync is not None:
            fraction = self.agreed = self.sync(fraction)
        if fraction >= 1.0:
            self.stopped = True
            self.model.stop_training = True


def learning_rate_at(
    step: int,
    *,
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    schedule: str = "cosine",
    final_fraction: float = 0.01,
    power: float = 4.0,
    decay_steps=(),
    factor: float = 0.1,
    time_fraction: float = 0.0,
) -> float:
    """darknet's burn-in, then cosine, step decay or constant, at a global step.

    Args:
        step: int. Global optimiser step (0-based).
        base_lr: float. Peak learning rate.
        total_steps: int. Steps of the whole run (epochs × steps per epoch).
        warmup_steps: int. Burn-in length: lr · ((step + 1) / warmup_steps)^power.
        schedule: str. "cosine", "steps" or "constant". Defaults to "cosine".
        final_fraction: float. lr at the end of the cosine, as a fraction of base_lr.
        power: float. Burn-in exponent (darknet uses 4). Defaults to 4.
        decay_steps: sequence of int. For "steps": global steps at which lr is
            multiplied by `factor`.
        factor: float. Step-decay factor. Defaults to 0.1.
        time_fraction: float. Share of the wall-clock budget spent; cosine progress is the
            larger of this and the share of steps done. Defaults to 0.
    """
    if step < warmup_steps:
        return base_lr * ((step + 1) / warmup_steps) ** power
    if schedule == "constant":
        return base_lr
    if schedule == "steps":
        return base_lr * factor ** sum(step >= s for s in decay_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, max(progress, time_fraction))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (final_fraction + (1.0 - final_fraction) * cosine)


class LearningRateCallback(keras.callbacks.Callback):
    """Sets the optimiser's learning rate before every batch (`learning_rate_at`).

    The step is the optimiser's iteration count, so a resumed run continues the schedule
    where it was; with a `budget`, the cosine anneals fully by the time the budget ends.
    The lr of the epoch's end goes into ``logs["lr"]`` (progress bar, CSV, TensorBoard).

    Args:
        budget: TimeBudget or None. Defaults to None.
        **schedule: the keyword arguments of `learning_rate_at` except `step` and
            `time_fraction`.
    """

    def __init__(self, budget: TimeBudget | None = None, **schedule):
        super().__init__()
        schedule["total_steps"] = max(1, schedule["total_steps"])
        schedule["decay_steps"] = sorted(schedule.get("decay_steps", ()))
        self.schedule = schedule
        self.budget = budget

    def lr_at(self, step: int, time_fraction: float = 0.0) -> float:
        """The learning rate at a global step (and share of the time budget spent)."""
        return learning_rate_at(step, time_fraction=time_fraction, **self.schedule)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        fraction = self.budget.shared_fraction() if self.budget else 0.0
        self.model.optimizer.learning_rate.assign(self.lr_at(step, fraction))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate.numpy())
