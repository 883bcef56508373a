"""``train.loggers: [wandb]``: the run as a Weights & Biases run.

Config: the resolved config ({section: {key: value}}). History: each epoch's logs
(`Tracker`), ``step`` = the 1-based epoch. Summary at the end: best.keras' COCO numbers
(under their own names, so the runs table compares best models) and ``best_epoch``. The
mode: ``train.wandb_mode``, else WANDB_MODE, else wandb's default (online); ``offline``
writes everything under ``RUN_DIR/wandb`` (WANDB_DIR when set) for a later ``wandb sync``.
The project: ``train.project``, else WANDB_PROJECT, else the run directory's parent folder.
"""

import math
import os

from detector.engine.callbacks.trackers import Tracker, numbers
from detector.engine.callbacks.user import RunResult


def best_epoch(result: RunResult) -> int | None:
    """The 1-based epoch of the best AP in the run's history (the first of equals)."""
    rows = [r for r in result.history if not math.isnan(r.get("AP", math.nan))]
    return max(rows, key=lambda r: r["AP"])["epoch"] if rows else None


class WandbLogger(Tracker):
    """The run as a W&B run (see the module). `mode`: str. "online", "offline",
    "disabled" or "" (WANDB_MODE, else online). Other arguments: `Tracker`'s."""

    key = "wandb"
    env_project = "WANDB_PROJECT"

    def __init__(self, *, mode: str = "", **common):
        super().__init__(**common)
        self.mode = mode
        self.run = None

    def open(self, run_id: str | None) -> None:
        import wandb

        self.run = wandb.init(
            project=self.project_name(),
            name=self.name,
            dir=None if os.environ.get("WANDB_DIR") else self.run_dir,
            config=self.config,
            mode=self.mode or None,
            id=run_id,
            resume="allow" if run_id else None,
            job_type="train",
        )
        self.save_id(self.run.id)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def upload(self, result: RunResult) -> None:
        summary = numbers(result.best_metrics)
        epoch = best_epoch(result)
        if epoch is not None:
            summary["best_epoch"] = epoch
        self.run.summary.update(summary)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
