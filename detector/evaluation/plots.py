"""The validation report's pictures (`detector.evaluation.report`): confusion matrix, F1 / P / R
against confidence, precision-recall at IoU 0.5, error breakdown, speed against accuracy.

Bare ``matplotlib.figure.Figure``s (never pyplot), written atomically as PNG.
"""

import os

import numpy as np
from matplotlib.figure import Figure

from detector.evaluation.tide import MAIN_ERRORS, SPECIAL_ERRORS
from detector.utils.atomic import atomic_save

LEGEND_CLASSES = 20  # per-class curves get legend entries up to this many classes
PICTURES = ("confusion_matrix.png", "F1_curve.png", "P_curve.png", "R_curve.png")
PICTURES += ("PR_curve.png", "errors.png")


def _save(fig: Figure, path: str) -> None:
    # A bare Figure (no pyplot) renders PNG with Agg whatever the process's backend is.
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), suffix=".png")


def plot_report(
    out_dir: str,
    names: list[str],
    conf: np.ndarray,
    curves: dict,
    means: dict,
    coco: dict,
    counts: np.ndarray,
    errors: dict,
    table: dict,
) -> None:
    """Writes `PICTURES` into `out_dir` from `detector.evaluation.report.write_report`'s
    parts: curves and their class means against the confidences `conf`, COCOeval's
    per-class numbers, the confusion counts, the error breakdown and the per-class table."""
    path = {name: os.path.join(out_dir, name) for name in PICTURES}
    labels = [*names, "background"]
    plot_confusion(counts, labels, path["confusion_matrix.png"], table["conf"])
    for key, label in (("F1", "F1"), ("P", "precision"), ("R", "recall")):
        picture, best = path[f"{key}_curve.png"], table["best_f1_conf"]
        plot_confidence(conf, curves[key], means[key], names, picture, label, best)
    plot_pr(coco["recall"], coco["precision50"], coco["AP50"], names, path["PR_curve.png"])
    plot_errors(errors, path["errors.png"])


def plot_confusion(counts: np.ndarray, labels: list[str], path: str, conf: float) -> None:
    """Counts and row-normalised confusion matrix side by side (`report.confusion_matrix`).

    counts: (C + 1, C + 1) int, rows true class, columns predicted class, the last of each
    background; labels: the C + 1 names."""
    size = len(labels)
    side = max(5.0, 0.4 * size + 2.5)
    fig = Figure(figsize=(2 * side + 1, side))
    totals = counts.sum(axis=1, keepdims=True)
    normalised = counts / np.maximum(totals, 1)
    panels = zip(fig.subplots(1, 2), (counts, normalised), ("counts", "row share"), strict=True)
    for ax, values, what in panels:
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if what == "row share" else None)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(size), labels, rotation=90 if size > 8 else 0)
        ax.set_yticks(range(size), labels)
        ax.set_xlabel("predicted class (background column: missed boxes)")
        ax.set_ylabel("true class (background row: false positives)")
        ax.set_title(f"confusion {what}, conf >= {conf:g}, IoU >= 0.5")
        if size <= 30:
            _annotate(ax, values, integer=what == "counts")
    _save(fig, path)


def _annotate(ax, values: np.ndarray, integer: bool) -> None:
    """Writes each non-zero cell's value in it, white on dark cells."""
    top = values.max() or 1
    for (row, col), value in np.ndenumerate(values):
        if value:
            text = f"{int(value)}" if integer else f"{value:.2f}"
            colour = "white" if value > 0.6 * top else "black"
            ax.text(col, row, text, ha="center", va="center", fontsize=8, color=colour)


def plot_confidence(
    conf: np.ndarray,
    values: np.ndarray,
    mean: np.ndarray,
    names: list[str],
    path: str,
    label: str,
    best_conf: float,
) -> None:
    """One of F1 / precision / recall against confidence: `values` (C, X) per class thin
    (NaN rows, classes without ground truth, left out), their `mean` (X,) thick, the
    best-F1 confidence dashed. conf: (X,) the confidences, ascending."""
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    legend = len(names) <= LEGEND_CLASSES
    for name, row in zip(names, values, strict=True):
        if not np.isnan(row).all():
            ax.plot(conf, row, linewidth=1, alpha=0.6, label=name if legend else None)
    best = min(int(np.searchsorted(conf, best_conf)), len(conf) - 1)
    ax.plot(conf, mean, "k", linewidth=3, label=f"all classes {mean[best]:.3f} at {best_conf:.3f}")
    ax.axvline(best_conf, color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence threshold (detections scoring >= x)")
    ax.set_ylabel(f"{label} at IoU 0.5")
    ax.set_title(f"{label} against confidence (dashed: best mean F1)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)


def plot_pr(
    recall: np.ndarray, precision: np.ndarray, ap50: np.ndarray, names: list[str], path: str
) -> None:
    """COCOeval's interpolated precision (C, R) at IoU 0.5 against recall (R,) per class,
    thin, with AP50 in the legend; the mean over the classes with ground truth thick."""
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    has = ~np.isnan(ap50)
    legend = len(names) <= LEGEND_CLASSES
    for name, row, ap in zip(names, precision, ap50, strict=True):
        if not np.isnan(ap):
            ax.plot(
                recall, row, linewidth=1, alpha=0.6, label=f"{name} {ap:.3f}" if legend else None
            )
    mean = precision[has].mean(axis=0) if has.any() else np.zeros_like(recall)
    mean_ap = float(ap50[has].mean()) if has.any() else 0.0
    ax.plot(recall, mean, "k", linewidth=3, label=f"all classes {mean_ap:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated, COCOeval)")
    ax.set_title("precision-recall at IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, title="AP50")
    _save(fig, path)


def plot_errors(errors: dict, path: str) -> None:
    """Horizontal bars of the AP50 points gained by fixing each error type
    (`tide.error_breakdown`), the main types above the two bounds."""
    names = list(MAIN_ERRORS + SPECIAL_ERRORS)
    gains = [100 * errors["gains"][n] for n in names]
    labels = [f"{n} ({errors['counts'][n]})" if n in errors["counts"] else n for n in names]
    colours = ["tab:red"] * len(MAIN_ERRORS) + ["tab:grey"] * len(SPECIAL_ERRORS)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    ax.barh(y, gains, color=colours)
    for yi, gain in zip(y, gains, strict=True):
        ax.text(gain, yi, f" {gain:.2f}", va="center", fontsize=9)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, max(max(gains) * 1.2, 1.0))
    ax.set_xlabel("AP50 points (x100) gained by fixing the type; (n): how many errors")
    ax.set_title(
        f"Error breakdown (TIDE), AP50 {errors['AP50']:.3f}\n"
        "red: one error type fixed; grey: every false positive / every miss fixed"
    )
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_speed_accuracy(rows: list[dict], path: str) -> None:
    """AP, AP50 and AP75 against images per second, one point per input size.

    rows: dicts {"size": int pixels, "AP", "AP50", "AP75": float, "images_per_s": float}."""
    rows = sorted(rows, key=lambda r: r["size"])
    speed = [r["images_per_s"] for r in rows]
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    for key, marker in (("AP", "o"), ("AP50", "s"), ("AP75", "^")):
        ax.plot(speed, [r[key] for r in rows], marker=marker, label=key)
    for r in rows:
        ax.annotate(
            f"{r['size']} px",
            (r["images_per_s"], r["AP"]),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
        )
    ax.set_xlabel("images per second")
    ax.set_ylabel("COCO AP")
    ax.set_ylim(0, 1)
    ax.set_title("speed against accuracy, by input size")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
