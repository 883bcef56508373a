"""Time in a run: the wall-clock budget and the learning-rate schedule that follows it.

`DarknetSchedule` is the optimiser's learning rate: darknet's burn-in, then cosine / step /
constant, annealing by whichever ends first, the steps or the budget, computed inside the
compiled train step from the optimiser's iteration count (no host round trip per batch).
`TimeBudget` stops training once the budget is spent and writes the share of it spent
into the schedule's ``time_fraction`` variable; `LearningRateCallback` reads the lr back
once per epoch for the logs. `learning_rate_at` is the plain-Python reference.
"""

import math
import time

import keras
from keras import ops


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

    The reference `DarknetSchedule` is tested against.

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


@keras.saving.register_keras_serializable(package="detector")
class DarknetSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate_at` as a Keras schedule, evaluated in the train step (float32).

    The step is the optimiser's iteration count, so a resumed run (iterations restored
    from the state) continues the schedule where it was. The share of the time budget
    spent is read from `time_fraction`, a non-trainable variable that `TimeBudget`
    writes; it is run-time state, not config (0 after `from_config`).

    Args:
        base_lr, total_steps, warmup_steps, schedule, final_fraction, power, decay_steps,
            factor: as `learning_rate_at` (``total_steps`` at least 1, ``decay_steps``
            sorted).
    """

    def __init__(
        self,
        base_lr: float,
        total_steps: int,
        warmup_steps: int,
        schedule: str = "cosine",
        final_fraction: float = 0.01,
        power: float = 4.0,
        decay_steps=(),
        factor: float = 0.1,
    ):
        if schedule not in ("cosine", "steps", "constant"):
            raise ValueError(f"train.schedule: {schedule!r}; expected cosine, steps or constant")
        self.base_lr = float(base_lr)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.final_fraction = float(final_fraction)
        self.power = float(power)
        self.decay_steps = sorted(int(s) for s in decay_steps)
        self.factor = float(factor)
        self.time_fraction = keras.Variable(
            0.0, dtype="float32", trainable=False, name="time_fraction"
        )

    def __call__(self, step):
        step = ops.cast(step, "float32")
        # clipped at 1: where() computes both branches, and a late step must not overflow
        ratio = ops.minimum((step + 1.0) / max(1, self.warmup_steps), 1.0)
        burn_in = self.base_lr * ops.power(ratio, self.power)
        return ops.where(step < self.warmup_steps, burn_in, self._after_burn_in(step))

    def _after_burn_in(self, step):
        if self.schedule == "constant":
            return ops.convert_to_tensor(self.base_lr, "float32")
        if self.schedule == "steps":
            passed = sum(
                (ops.cast(step >= s, "float32") for s in self.decay_steps),
                ops.convert_to_tensor(0.0, "float32"),
            )
            return self.base_lr * ops.power(self.factor, passed)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = ops.maximum((step - self.warmup_steps) / span, self.time_fraction)
        progress = ops.minimum(progress, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        return self.base_lr * (self.final_fraction + (1.0 - self.final_fraction) * cosine)

    def get_config(self) -> dict:
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "schedule": self.schedule,
            "final_fraction": self.final_fraction,
            "power": self.power,
            "decay_steps": list(self.decay_steps),
            "factor": self.factor,
        }


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
