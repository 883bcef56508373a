"""PNG plots of a dataset (``python -m detector.data check --plots DIR``): bare
``matplotlib.figure.Figure``s (never pyplot), written atomically."""

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from detector.data.records import Dataset
from detector.model.anchors import box_shapes, kmeans_anchors, mean_best_iou
from detector.model.grid import STRIDE
from detector.utils.atomic import atomic_save


def _save(fig: Figure, path: str) -> str:
    """Writes `fig` as a PNG at `path` under a temporary name, then renames it (a bare
    Figure renders with Agg whatever the process's backend); returns `path`."""
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), suffix=".png")
    return path


def plot_class_histogram(datasets: dict[str, Dataset], path: str) -> str:
    """Boxes per class, one bar group per split."""
    names = next(iter(datasets.values())).names
    fig = Figure(figsize=(max(6, 0.35 * len(names) + 2), 4))
    ax = fig.subplots()
    x = np.arange(len(names))
    width = 0.8 / len(datasets)
    for k, (split, ds) in enumerate(datasets.items()):
        counts = np.bincount(
            np.concatenate([r.classes for r in ds.records] or [np.zeros(0, int)]).astype(int),
            minlength=len(names),
        )
        ax.bar(x + k * width, counts, width, label=f"{split} ({counts.sum()} boxes)")
    ax.set_xticks(x + width * (len(datasets) - 1) / 2, names, rotation=90 if len(names) > 8 else 0)
    ax.set_ylabel("boxes")
    ax.set_title("boxes per class")
    ax.legend()
    return _save(fig, path)


def plot_box_shapes(dataset: Dataset, cfg, path: str) -> str:
    """Box width vs height in pixels of the network input, with k-means anchors."""
    size = cfg.model.input_size
    wh = box_shapes(dataset.records, size, cfg.data.letterbox)
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    if len(wh):
        k = cfg.model.num_anchors
        anchors = kmeans_anchors(wh, k)
        ax.scatter(wh[:, 0] * STRIDE, wh[:, 1] * STRIDE, s=4, alpha=0.3, label=f"{len(wh)} boxes")
        ax.scatter(
            anchors[:, 0] * STRIDE,
            anchors[:, 1] * STRIDE,
            s=120,
            marker="x",
            color="red",
            label=f"{k} k-means anchors, mean IoU {mean_best_iou(wh, anchors):.3f}",
        )
        if isinstance(cfg.model.anchors, list):
            configured = np.asarray(cfg.model.anchors) * STRIDE
            ax.scatter(
                configured[:, 0],
                configured[:, 1],
                s=80,
                marker="+",
                color="green",
                label="configured anchors",
            )
    ax.set_xlim(0, size)
    ax.set_ylim(0, size)
    ax.set_xlabel(f"box width, px of the {size}-px input")
    ax.set_ylabel("box height, px")
    ax.set_title("training box shapes")
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_augmented(
    dataset: Dataset, cfg, augmenter, path: str, count: int = 16, seed: int = 0
) -> str:
    """A grid of training samples as the pipeline makes them with `augmenter` (the run's,
    ``engine.build.make_augmenter``; mosaic and mixup included with ``data.mosaic`` /
    ``data.mixup`` > 0, record lists only; then ``data.albumentations``), boxes and
    classes drawn."""
    from detector.data.augment import prepare_example
    from detector.data.mosaic import ExampleMaker

    d, size = cfg.data, cfg.model.input_size
    maker = None
    if not dataset.records.packed:
        work = round(max([size, *d.multiscale]) * augmenter.max_zoom)
        maker = ExampleMaker(dataset.records, augmenter, d.letterbox, work, d.mosaic, d.mixup)
    rng = np.random.default_rng(seed)
    records = dataset.records
    with_boxes = [i for i, r in enumerate(records) if len(r.boxes)] or list(range(len(records)))
    picks = [
        with_boxes[i]
        for i in rng.choice(len(with_boxes), min(count, len(with_boxes)), replace=False)
    ]
    # a packed split has its images in its shards, not (necessarily) at the original paths
    images = {} if maker else records.read_images(picks)
    cols = int(np.ceil(np.sqrt(len(picks))))
    rows = int(np.ceil(len(picks) / cols))
    fig = Figure(figsize=(3 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index in zip(axes.ravel(), picks, strict=False):
        if maker is not None:
            image, boxes, classes = maker.make(index, size, rng)
        else:
            example = prepare_example(
                records[index], size, augmenter, rng, d.letterbox, images.get(index)
            )
            image, boxes, classes = augmenter.finish(*example, rng)
        ax.imshow(image)
        for (x1, y1, x2, y2), c in zip(boxes, classes, strict=True):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1))
            label_box = {"facecolor": "lime", "pad": 0.5, "lw": 0}
            ax.text(x1, y1, dataset.names[c], color="black", fontsize=6, bbox=label_box)
    fig.suptitle("augmented training samples")
    return _save(fig, path)
