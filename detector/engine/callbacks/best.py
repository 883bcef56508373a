"""Keeping the best checkpoint: best.keras, best.json and pr_curve.png of the best AP."""

import os

from detector.engine.callbacks.listeners import EvalListener, Evaluation
from detector.utils.atomic import atomic_save, atomic_write_json


class KeepBest(EvalListener):
    """A part of `BestCocoAP`: on a better AP than `best_ap`, saves the evaluated model as
    ``best.keras`` with ``best.json`` (its epoch, 1-based, and metrics) atomically, and
    ``pr_curve.png``; marks the evaluation ``is_best`` with its ``checkpoint``.

    It runs where the evaluation ran (``on_evaluated``): with ``eval.async`` in the worker
    thread, saving the snapshot model, so the best checkpoint holds the evaluated weights.

    Args:
        run_dir: str. Where best.keras / best.json / pr_curve.png go.
        best_ap: float. Best AP so far (a resumed run passes its own). Defaults to -1.
    """

    def __init__(self, run_dir: str, best_ap: float = -1.0):
        self.run_dir = run_dir
        self.best_ap = best_ap

    @property
    def path(self) -> str:
        return os.path.join(self.run_dir, "best.keras")

    def on_evaluated(self, evaluation: Evaluation) -> None:
        if evaluation.metrics["AP"] <= self.best_ap:
            return
        self.best_ap = evaluation.metrics["AP"]
        self.save_best(evaluation)
        evaluation.is_best, evaluation.checkpoint = True, self.path

    def save_best(self, evaluation: Evaluation) -> None:
        """Saves the evaluated model as best.keras, with best.json and pr_curve.png,
        through the atomic writers."""
        epoch, metrics, curves = evaluation.epoch, evaluation.metrics, evaluation.curves
        atomic_save(self.path, evaluation.model.save, suffix=".keras")
        atomic_write_json(os.path.join(self.run_dir, "best.json"), {"epoch": epoch + 1, **metrics})
        if curves:
            from detector.evaluation.training_plots import plot_pr

            title = f"best model (epoch {epoch + 1}): precision-recall, class mean"
            plot_pr(curves, os.path.join(self.run_dir, "pr_curve.png"), title)
