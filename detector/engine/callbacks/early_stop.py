"""Early stopping on COCO AP (``train.patience``)."""

from detector.engine.callbacks.listeners import EvalListener, Evaluation


class EarlyStop(EvalListener):
    """A part of `BestCocoAP`: stops training after `patience` evaluations without a
    better AP (the evaluation's ``is_best``, set by `KeepBest`).

    It judges in the training thread when an evaluation lands (``on_landed``): with
    ``eval.async`` at the next epoch end, so training stops one epoch later than it would
    evaluating at the epoch end.

    Args:
        patience: int. Evaluations without a better AP before stopping; 0 = never.
        stale: int. Evaluations since the best so far (a resumed run passes its own, so
            the count goes on across ``--resume``). Defaults to 0.
    """

    def __init__(self, patience: int, stale: int = 0):
        self.patience = patience
        self.stale = stale
        self.early_stopped = False

    def on_landed(self, evaluation: Evaluation) -> None:
        self.stale = 0 if evaluation.is_best else self.stale + 1
        if self.patience and self.stale >= self.patience and not self.early_stopped:
            print(f"\nno better AP in {self.stale} evaluations: stopping (train.patience)")
            self.early_stopped = True
            self.model.stop_training = True
