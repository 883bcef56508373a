"""The learning-rate schedule, which follows the wall-clock budget.

`DarknetSchedule` is the optimiser's learning rate: darknet's burn-in, then cosine / step /
constant, annealing by whichever ends first, the steps or the budget, computed inside the
compiled train step from the optimiser's iteration count (no host round trip per batch).
`TimeBudget` (`detector.engine.callbacks.schedule`) writes the share of the budget spent
into the schedule's ``time_fraction`` variable; `LearningRateCallback` reads the lr back
once per epoch for the logs. `learning_rate_at` is the plain-Python reference.
"""

import math

import keras
from keras import ops


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
