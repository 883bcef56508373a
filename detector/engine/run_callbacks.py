"""`RunCallbacks`: what ``build.make_callbacks`` returns, the run's callbacks in order and
the ones ``run`` asks after ``fit``."""

import dataclasses

from detector.engine.callbacks.best import KeepBest
from detector.engine.callbacks.coco_ap import BestCocoAP
from detector.engine.callbacks.distribute import ChiefOnly, SyncStop
from detector.engine.callbacks.early_stop import EarlyStop
from detector.engine.callbacks.schedule import TimeBudget
from detector.engine.callbacks.user import UserEvents


@dataclasses.dataclass
class RunCallbacks:
    """The ordered callbacks of `fit`, and the ones the caller asks after it.

    Attributes:
        callbacks: list of keras Callback. In the order of `make_callbacks`.
        budget: TimeBudget. best: BestCocoAP or None (non-chief workers), with its parts
            keep_best: KeepBest, early_stop: EarlyStop and events: UserEvents (None there).
        chief_only: ChiefOnly or None (multi-worker chief). sync_stop: SyncStop or None.
    """

    callbacks: list
    budget: TimeBudget
    best: BestCocoAP | None = None
    keep_best: KeepBest | None = None
    early_stop: EarlyStop | None = None
    events: UserEvents | None = None
    chief_only: ChiefOnly | None = None
    sync_stop: SyncStop | None = None

    def chief_failed(self) -> bool:
        """Whether a chief-only callback failed (multi-worker; `SyncStop` asks)."""
        return bool(self.chief_only and self.chief_only.error)

    def state_extras(self) -> dict:
        """What `RunState` saves beside the weights: the best AP, the evaluations since it
        and the time spent."""
        best = self.keep_best.best_ap if self.keep_best else -1.0
        stale = self.early_stop.stale if self.early_stop else 0
        return {"best_ap": best, "stale": stale, "seconds": self.budget.spent()}
