"""``run(config)``: builds data, model and callbacks, calls ``fit``, fills the run directory."""

import json
import os
import time

import keras
import numpy as np

from detector.anchors import box_shapes, kmeans_anchors, mean_best_iou
from detector.callbacks import (
    BestCocoAP,
    LearningRateSchedule,
    MetricsCSV,
    NonFiniteGuard,
    NonFiniteLoss,
    TimeBudget,
    ema_weights,
)
from detector.config import Config, save_config
from detector.data.augment import build_augmenter
from detector.data.pipeline import make_train_dataset
from detector.data.records import Dataset
from detector.data.spec import load_dataset
from detector.evaluation import STAT_NAMES, evaluate_model, format_metrics, ground_truth
from detector.io import atomic_save
from detector.loss import TERMS, YoloLoss, identity_loss
from detector.model import build_inference_model, build_training_model
from detector.state import RunState, resolve, truncate_csv


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
    common = {"global_clipnorm": t.clip_norm or None, "use_ema": t.ema_momentum > 0,
              "ema_momentum": t.ema_momentum or 0.99}  # fmt: skip
    if t.optimizer == "adam":
        return keras.optimizers.Adam(t.lr, **common)
    if t.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            t.lr, momentum=t.momentum, weight_decay=t.weight_decay, **common
        )
    else:
        optimizer = keras.optimizers.AdamW(t.lr, weight_decay=t.weight_decay, **common)
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
    """Saves the evaluation model (float32, the EMA weights when there are) to
    ``last.keras`` atomically at every epoch end."""

    def __init__(self, best: BestCocoAP, path: str):
        super().__init__()
        self.best = best
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        weights = ema_weights(self.best.inference_model, self.model.optimizer)
        self.best.eval_model.set_weights(weights)
        atomic_save(self.path, self.best.eval_model.save, suffix=".keras")


class TrainingStopped(RuntimeError):
    """The run stopped on purpose with a message for the user (e.g. a non-finite loss)."""


def run(cfg: Config, resume: bool = False) -> dict:
    """Trains as configured; returns the COCO metrics of ``best.keras`` on the val split.

    With ``resume``, ``cfg.train.run_dir`` is an existing run whose state (weights,
    optimiser, EMA, epoch, best AP, time spent, data position) is restored from
    ``RUN_DIR/state``; training continues to ``cfg.train.epochs``.
    """
    start = time.monotonic()
    train = load_dataset(cfg.data.spec, "train")
    val = load_dataset(cfg.data.spec, "val")
    report_problems("train", train)
    report_problems("val", val)
    steps = len(train.records) // cfg.data.batch_size
    if steps == 0:
        raise ValueError(f"data.batch_size: {cfg.data.batch_size} exceeds the "
                         f"{len(train.records)} training images")  # fmt: skip
    meta = None
    if resume:
        run_dir = cfg.train.run_dir
        meta = resolve(run_dir)
        done = meta["epoch"] if meta else 0
        if done >= cfg.train.epochs:
            print(f"{run_dir} has finished its {done} epochs: nothing to do (pass a larger "
                  "--epochs to extend it)")  # fmt: skip
            return {}
        print(f"resuming {run_dir} after epoch {done}" if meta else
              f"{run_dir}: no completed epoch saved yet, starting it again")  # fmt: skip
        anchors = cfg.model.anchors
    else:
        run_dir = unique_run_dir(cfg.train.run_dir)
        os.makedirs(run_dir, exist_ok=True)
        anchors = choose_anchors(cfg, train)
        cfg.model.anchors, cfg.model.num_anchors = anchors, len(anchors)
        cfg.train.run_dir = run_dir
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    done = meta["epoch"] if meta else 0
    csv_path = os.path.join(run_dir, "metrics.csv")
    truncate_csv(csv_path, done)
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    print(f"run directory: {run_dir}  ({len(train.records)} train / {len(val.records)} val images)")

    d, t, e = cfg.data, cfg.train, cfg.eval
    inference = build_inference_model(
        len(train.names), anchors, cfg.model.variant, cfg.model.width, cfg.model.input_size,
        class_names=train.names, category_ids=train.category_ids, letterbox=d.letterbox,
    )  # fmt: skip
    if cfg.model.init_weights and not meta:
        from detector.darknet import load_init_weights

        loaded, total = load_init_weights(inference, cfg.model.init_weights)
        print(f"init weights: {loaded} of {total} conv layers loaded from {cfg.model.init_weights}")
    model = build_training_model(inference, make_loss(cfg, anchors, len(train.names)),
                                 d.max_boxes)  # fmt: skip
    model.compile(optimizer=make_optimizer(cfg), loss=identity_loss, jit_compile=t.jit_compile)

    def make_augmenter():
        return build_augmenter(d.hflip, tuple(d.scale), d.translate, d.hue, d.saturation,
                               d.exposure, d.min_visibility)  # fmt: skip

    train_ds = make_train_dataset(
        train.records, cfg.model.input_size, anchors, d.batch_size, d.max_boxes,
        make_augmenter, seed=t.seed, parallel_calls=d.workers,  # -1 = AUTOTUNE
        iou_thresh=cfg.loss.iou_thresh, letterbox=d.letterbox,
        multiscale=tuple(d.multiscale) or None, multiscale_every=d.multiscale_every,
        start_step=done * steps, cache_mb=d.cache_mb,
    )  # fmt: skip
    spent = meta.get("seconds", 0.0) if meta else 0.0
    budget = TimeBudget(t.max_minutes, start, spent_before=spent)
    best_ap = meta.get("best_ap", -1.0) if meta else -1.0
    best_json = os.path.join(run_dir, "best.json")
    if resume and os.path.isfile(best_json):  # a best saved after the last state counts too
        with open(best_json) as f:
            best_ap = max(best_ap, json.load(f).get("AP", -1.0))
    best = BestCocoAP(
        inference, val, ground_truth(val), run_dir, e.is_eval_epoch, best_ap=best_ap,
        patience=t.patience, image_dir=os.path.join(run_dir, "tensorboard", "images"),
        batch_size=e.batch_size, score_threshold=e.score_threshold,
        nms_iou=e.nms_iou, max_detections=e.max_detections,
    )  # fmt: skip
    decay = [int(round(epoch * steps)) for epoch in t.steps]
    callbacks = [
        NonFiniteGuard(),
        LearningRateSchedule(
            t.lr, steps * t.epochs, int(t.warmup_epochs * steps), t.schedule,
            t.final_lr_fraction, budget, power=t.warmup_power, decay_steps=decay,
            factor=t.step_factor,
        ),
        budget,
        best,
        SaveLast(best, os.path.join(run_dir, "last.keras")),
        MetricsCSV(csv_path, ["lr", "loss", *TERMS, *STAT_NAMES],
                   plot_path=os.path.join(run_dir, "curves.png")),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), write_graph=False),
        # Last: it saves the state once everything above has finished with the epoch.
        RunState(run_dir, extras=lambda: {"best_ap": best.best_ap, "seconds": budget.spent()}),
    ]  # fmt: skip
    try:
        model.fit(train_ds, epochs=t.epochs, steps_per_epoch=steps, callbacks=callbacks,
                  shuffle=False, verbose=2 if os.environ.get("CI") else 1)  # fmt: skip
    except KeyboardInterrupt:
        print(f"\ninterrupted. The state after the last completed epoch is saved in "
              f"{os.path.join(run_dir, 'state')}; continue with:\n"
              f"  python train.py --resume {run_dir}")  # fmt: skip
        raise
    except NonFiniteLoss as error:
        raise TrainingStopped(str(error)) from None
    if budget.stopped:
        print(f"stopped after the {t.max_minutes:g}-minute budget")
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
