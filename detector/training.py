"""``run(config)``: builds data, model and callbacks, calls ``fit``, fills the run directory."""

import os
import time

import keras
import numpy as np

from detector.anchors import box_shapes, kmeans_anchors, mean_best_iou
from detector.callbacks import BestCocoAP, LearningRateSchedule, MetricsCSV, TimeBudget
from detector.config import Config, save_config
from detector.data.augment import build_augmenter
from detector.data.pipeline import make_train_dataset
from detector.data.records import Dataset
from detector.data.spec import load_dataset
from detector.evaluation import STAT_NAMES, evaluate_model, format_metrics, ground_truth
from detector.io import atomic_save
from detector.loss import TERMS, YoloLoss, identity_loss
from detector.model import build_inference_model, build_training_model


def choose_anchors(cfg: Config, train: Dataset) -> list[list[float]]:
    """The configured anchors, or k-means clusters of the training boxes (grid cells)."""
    if cfg.model.anchors != "auto":
        return cfg.model.anchors
    wh = box_shapes(train.records, cfg.model.input_size, cfg.data.letterbox)
    anchors = kmeans_anchors(wh, cfg.model.num_anchors, seed=cfg.train.seed)
    print(f"anchors (k-means, grid cells): {np.round(anchors, 3).tolist()}, "
          f"mean best IoU {mean_best_iou(wh, anchors):.3f}")  # fmt: skip
    return anchors.tolist()


def make_optimizer(cfg: Config) -> keras.optimizers.Optimizer:
    """The configured optimiser; its learning rate is driven by ``LearningRateSchedule``.

    SGD (darknet's) and AdamW decay the conv kernels only, not BatchNorm or biases.
    """
    t = cfg.train
    if t.optimizer == "adam":
        return keras.optimizers.Adam(t.lr)
    if t.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    else:
        optimizer = keras.optimizers.AdamW(t.lr, weight_decay=t.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def make_loss(cfg: Config, anchors, num_classes: int) -> YoloLoss:
    """The YoloLoss layer with the config's scales."""
    c = cfg.loss
    return YoloLoss(
        anchors, num_classes, coord_scale=c.coord_scale, object_scale=c.object_scale,
        noobject_scale=c.noobject_scale, class_scale=c.class_scale,
        ignore_thresh=c.ignore_thresh, rescore=c.rescore,
        warmup_images=c.warmup_images, prior_scale=c.prior_scale, objectness=c.objectness,
        name="yolo_loss",
    )  # fmt: skip


def unique_run_dir(path: str) -> str:
    """``path`` if it is free (absent or empty), else the first free ``path-2``, ``path-3``…"""
    candidate, n = path, 1
    while os.path.isdir(candidate) and os.listdir(candidate):
        n += 1
        candidate = f"{path}-{n}"
    return candidate


def report_problems(name: str, dataset: Dataset) -> None:
    """Prints the data problems the readers and the image check counted, once, before
    training; an empty split is an error."""
    print(dataset.problems.report(f"{name} ({len(dataset.records)} images)"))
    if not dataset.records:
        raise ValueError(f"the {name} split has no usable image (see the problems above)")


class SaveLast(keras.callbacks.Callback):
    """Saves the inference model to ``last.keras`` atomically at every epoch end."""

    def __init__(self, inference_model: keras.Model, path: str):
        super().__init__()
        self.inference_model = inference_model
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        atomic_save(self.path, self.inference_model.save, suffix=".keras")


def run(cfg: Config) -> dict:
    """Trains as configured; returns the COCO metrics of ``best.keras`` on the val split."""
    start = time.monotonic()
    train = load_dataset(cfg.data.spec, "train")
    val = load_dataset(cfg.data.spec, "val")
    report_problems("train", train)
    report_problems("val", val)
    run_dir = unique_run_dir(cfg.train.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    anchors = choose_anchors(cfg, train)
    cfg.model.anchors, cfg.model.num_anchors = anchors, len(anchors)
    cfg.train.run_dir = run_dir
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    print(f"run directory: {run_dir}  ({len(train.records)} train / {len(val.records)} val images)")

    inference = build_inference_model(
        len(train.names), anchors, cfg.model.variant, cfg.model.width, cfg.model.input_size,
        class_names=train.names, category_ids=train.category_ids, letterbox=cfg.data.letterbox,
    )  # fmt: skip
    model = build_training_model(inference, make_loss(cfg, anchors, len(train.names)),
                                 cfg.data.max_boxes)  # fmt: skip
    model.compile(optimizer=make_optimizer(cfg), loss=identity_loss)

    d = cfg.data

    def make_augmenter():
        return build_augmenter(d.hflip, tuple(d.scale), d.translate, d.hue, d.saturation,
                               d.exposure, d.min_visibility)  # fmt: skip

    train_ds = make_train_dataset(
        train.records, cfg.model.input_size, anchors, d.batch_size, d.max_boxes,
        make_augmenter, seed=cfg.train.seed, parallel_calls=d.workers,  # -1 = AUTOTUNE
        iou_thresh=cfg.loss.iou_thresh, letterbox=d.letterbox,
        multiscale=tuple(d.multiscale) or None, multiscale_every=d.multiscale_every,
    )  # fmt: skip
    steps = len(train.records) // d.batch_size
    if steps == 0:
        raise ValueError(f"data.batch_size: {d.batch_size} exceeds the "
                         f"{len(train.records)} training images")  # fmt: skip
    budget = TimeBudget(cfg.train.max_minutes, start)
    e = cfg.eval
    callbacks = [
        LearningRateSchedule(
            cfg.train.lr, steps * cfg.train.epochs, int(cfg.train.warmup_epochs * steps),
            cfg.train.schedule, cfg.train.final_lr_fraction, budget,
        ),
        budget,
        BestCocoAP(
            inference, val, ground_truth(val), run_dir, e.is_eval_epoch,
            batch_size=e.batch_size, score_threshold=e.score_threshold,
            nms_iou=e.nms_iou, max_detections=e.max_detections,
        ),
        SaveLast(inference, os.path.join(run_dir, "last.keras")),
        MetricsCSV(os.path.join(run_dir, "metrics.csv"), ["lr", "loss", *TERMS, *STAT_NAMES]),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), write_graph=False),
    ]  # fmt: skip
    model.fit(train_ds, epochs=cfg.train.epochs, steps_per_epoch=steps, callbacks=callbacks,
              shuffle=False, verbose=2 if os.environ.get("CI") else 1)  # fmt: skip
    if budget.stopped:
        print(f"stopped after the {cfg.train.max_minutes:g}-minute budget")
    return final_report(run_dir, val, e)


def final_report(run_dir: str, val: Dataset, e) -> dict:
    """Loads ``best.keras`` back from disk, evaluates it and prints the COCO table."""
    best = keras.models.load_model(os.path.join(run_dir, "best.keras"), safe_mode=True)
    input_size = best.get_layer("yolo_head").input_size
    metrics, _ = evaluate_model(
        best, val, input_size, batch_size=e.batch_size, score_threshold=e.score_threshold,
        nms_iou=e.nms_iou, max_detections=e.max_detections,
    )  # fmt: skip
    print(f"\nbest checkpoint {os.path.join(run_dir, 'best.keras')} on the val split:")
    print(format_metrics(metrics))
    return metrics
