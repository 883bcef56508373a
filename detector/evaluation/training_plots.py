"""Training pictures in the run directory: loss terms and AP per epoch, the PR curve."""

import csv
import math

import numpy as np
from matplotlib.figure import Figure

from detector.utils.atomic import atomic_save

TERM_COLUMNS = ("loss", "coord", "obj", "noobj", "cls")
AP_COLUMNS = ("AP", "AP50", "AP75")


def _read(path: str) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(math.nan)
    return columns


def _save(fig: Figure, path: str) -> None:
    # A bare Figure (no pyplot) renders PNG with Agg whatever the process's backend is.
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), suffix=".png")


def plot_curves(csv_path: str, png_path: str) -> None:
    """Loss and its terms (log scale), AP / AP50 / AP75 and lr against epoch."""
    data = _read(csv_path)
    if not data.get("epoch"):
        return
    epoch = np.asarray(data["epoch"])
    fig = Figure(figsize=(15, 4))
    ax_loss, ax_ap, ax_lr = fig.subplots(1, 3)
    for name in TERM_COLUMNS:
        if name in data:
            ax_loss.plot(epoch, data[name], label=name, marker="." if len(epoch) < 30 else None)
    ax_loss.set_yscale("log")
    ax_loss.set_title("training loss terms (per image)")
    for name in AP_COLUMNS:
        values = np.asarray(data.get(name, []), float)
        seen = ~np.isnan(values)
        if seen.any():
            ax_ap.plot(epoch[seen], values[seen], label=name, marker=".")
    ax_ap.set_ylim(0, 1)
    ax_ap.set_title("validation COCO AP")
    if "lr" in data:
        ax_lr.plot(epoch, data["lr"])
    ax_lr.set_title("learning rate (end of epoch)")
    for ax in (ax_loss, ax_ap, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_ap.legend()
    fig.tight_layout()
    _save(fig, png_path)


def plot_pr(curves: dict, png_path: str, title: str) -> None:
    """Class-averaged precision-recall curves (from ``evaluation.pr_curves``)."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for name in ("IoU=0.50", "IoU=0.75", "IoU=0.50:0.95"):
        ax.plot(curves["recall"], curves[name], label=f"{name} (AP {np.mean(curves[name]):.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    _save(fig, png_path)
