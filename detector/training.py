"""``run(config)``: builds data, model and callbacks, calls ``fit``, fills the run directory."""

import json
import os
import time
import zlib
from dataclasses import asdict

import keras
import numpy as np
import yaml

from detector.anchors import box_shapes, kmeans_anchors, mean_best_iou
from detector.callbacks import (
    BestCocoAP,
    ChiefOnly,
    LearningRateSchedule,
    MetricsCSV,
    NonFiniteGuard,
    NonFiniteLoss,
    SyncStop,
    TimeBudget,
    ema_weights,
)
from detector.config import Config, save_config
from detector.data.augment import build_augmenter
from detector.data.pipeline import make_train_dataset
from detector.data.records import Dataset
from detector.data.spec import load_dataset
from detector.distribute import Cluster, ClusterError, make_cluster
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


def make_optimizer(cfg: Config, lr: float | None = None) -> keras.optimizers.Optimizer:
    """The configured optimiser; its learning rate is driven by ``LearningRateSchedule``
    (``lr``: the initial value, default ``train.lr``).

    SGD (darknet's) and AdamW decay the conv kernels only, not BatchNorm or biases.
    """
    t = cfg.train
    lr = t.lr if lr is None else lr
    common = {"global_clipnorm": t.clip_norm or None, "use_ema": t.ema_momentum > 0,
              "ema_momentum": t.ema_momentum or 0.99}  # fmt: skip
    if t.optimizer == "adam":
        return keras.optimizers.Adam(lr, **common)
    if t.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            lr, momentum=t.momentum, weight_decay=t.weight_decay, **common
        )
    else:
        optimizer = keras.optimizers.AdamW(lr, weight_decay=t.weight_decay, **common)
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

    Under ``train.distribute`` (docs/distributed.md) every worker process calls this with
    the same config; only the chief (worker 0) writes the run directory, evaluates and
    returns the metrics (the others return {}).
    """
    start = time.monotonic()
    cluster = make_cluster(cfg.train.distribute, cfg.train.devices)  # before any TF work
    try:
        return _run(cfg, resume, cluster, start)
    finally:
        cluster.cleanup()


def _setup_run_dir(cfg: Config, resume: bool, cluster: Cluster, train: Dataset):
    """(run_dir, restored state metadata or None, anchors); creates the run directory
    and writes config.yaml on the chief."""
    meta = None
    if resume:
        run_dir = cfg.train.run_dir
        meta = resolve(run_dir, repair=cluster.is_chief)
        anchors = cfg.model.anchors
    else:
        run_dir = cfg.train.run_dir
        if cluster.multi_worker:  # every worker must name the same directory: no suffix
            if cluster.is_chief and os.path.isdir(run_dir) and os.listdir(run_dir):
                raise ValueError(f"run directory {run_dir} is not empty: pass another "
                                 "--run-dir, or --resume it")  # fmt: skip
        else:
            run_dir = unique_run_dir(run_dir)
        anchors = choose_anchors(cfg, train)
        cfg.model.anchors, cfg.model.num_anchors = anchors, len(anchors)
        cfg.train.run_dir = run_dir
    if cluster.is_chief:
        os.makedirs(run_dir, exist_ok=True)
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
        truncate_csv(os.path.join(run_dir, "metrics.csv"), meta["epoch"] if meta else 0)
    return run_dir, meta, anchors


def _check_workers_agree(cluster: Cluster, cfg: Config, images: int, done: int, run_dir: str):
    """Multi-worker: the same training set, config and restored epoch on every worker,
    else a `ClusterError` naming what differs (before the first step, not a hang later)."""
    if not cluster.same_everywhere(images):
        raise ClusterError(f"the workers read different training sets (this one: {images} "
                           "images): every worker needs the same dataset")  # fmt: skip
    digest = zlib.crc32(yaml.safe_dump(asdict(cfg), sort_keys=True).encode()) & 0xFFFFFF
    if not cluster.same_everywhere(digest):  # 24 bits: exact in float32
        raise ClusterError("the workers run different configs (same config file, --epochs "
                           "and --set on every worker)")  # fmt: skip
    if not cluster.same_everywhere(done):
        raise ClusterError(
            f"the workers restored different epochs from {os.path.join(run_dir, 'state')} "
            f"(this one: {done}): a resumed multi-worker run needs its run directory on a "
            "filesystem every worker reads (docs/distributed.md)"
        )


def _run(cfg: Config, resume: bool, cluster: Cluster, start: float) -> dict:
    d, t, e = cfg.data, cfg.train, cfg.eval

    def read_data():
        return load_dataset(d.spec, "train"), load_dataset(d.spec, "val")

    # An error on one worker must stop all of them (`Cluster.agree`). The chief reads the
    # data first: a synthetic spec is generated on first use, by the chief alone.
    try:
        if cluster.is_chief:
            train, val = read_data()
    except Exception:
        cluster.agree(False, "to read the data")
        raise
    cluster.agree(True, "to read the data")
    try:
        if not cluster.is_chief:
            train, val = read_data()
        report_problems("train", train)
        report_problems("val", val)
        steps = len(train.records) // d.batch_size
        if steps == 0:
            raise ValueError(f"data.batch_size: {d.batch_size} exceeds the "
                             f"{len(train.records)} training images")  # fmt: skip
        if d.batch_size % cluster.num_replicas:
            raise ValueError(f"data.batch_size: {d.batch_size} (the global batch) does not "
                             f"split evenly over {cluster.num_replicas} replicas")  # fmt: skip
        run_dir, meta, anchors = _setup_run_dir(cfg, resume, cluster, train)
        init = cfg.model.init_weights
        if init and not meta and not os.path.isfile(init):
            raise ValueError(f"model.init_weights: file not found: {init}")
        if cluster.is_chief:  # what only the chief needs, read before any collective
            coco_gt = ground_truth(val)
            best_ap = meta.get("best_ap", -1.0) if meta else -1.0
            best_json = os.path.join(run_dir, "best.json")
            if resume and os.path.isfile(best_json):  # a best saved after the last state
                with open(best_json) as f:
                    best_ap = max(best_ap, json.load(f).get("AP", -1.0))
    except Exception:
        cluster.agree(False, "to set up")
        raise
    cluster.agree(True, "to set up")
    done = meta["epoch"] if meta else 0
    if cluster.multi_worker:
        _check_workers_agree(cluster, cfg, len(train.records), done, run_dir)
    if resume and done >= t.epochs:
        print(f"{run_dir} has finished its {done} epochs: nothing to do (pass a larger "
              "--epochs to extend it)")  # fmt: skip
        return {}
    if resume:
        print(f"resuming {run_dir} after epoch {done}" if meta else
              f"{run_dir}: no completed epoch saved yet, starting it again")  # fmt: skip
    write_dir = cluster.write_dir(run_dir)
    keras.mixed_precision.set_global_policy(t.precision)
    lr = t.lr * (cluster.num_replicas if t.scale_lr else 1)
    print(f"run directory: {run_dir}  ({len(train.records)} train / {len(val.records)} val images)"
          + ("" if cluster.is_chief else f"; this worker ({cluster.worker_index}) writes to "
             f"{write_dir} only"))  # fmt: skip
    if cluster.kind != "none":
        n = cluster.num_replicas
        print(f"distribute: {cluster.kind}, {n} replicas on {cluster.num_workers} worker(s); "
              f"global batch {d.batch_size} = {n} x {d.batch_size // n}; lr {lr:g}")  # fmt: skip

    with cluster.strategy.scope():
        inference = build_inference_model(
            len(train.names), anchors, cfg.model.variant, cfg.model.width,
            cfg.model.input_size, class_names=train.names, category_ids=train.category_ids,
            letterbox=d.letterbox, sync_bn=t.sync_batchnorm,
        )  # fmt: skip
        if cfg.model.init_weights and not meta:
            from detector.darknet import load_init_weights

            loaded, total = load_init_weights(inference, cfg.model.init_weights)
            print(f"init weights: {loaded} of {total} conv layers loaded from "
                  f"{cfg.model.init_weights}")  # fmt: skip
        model = build_training_model(inference, make_loss(cfg, anchors, len(train.names)),
                                     d.max_boxes)  # fmt: skip
        model.compile(optimizer=make_optimizer(cfg, lr), loss=identity_loss,
                      jit_compile=t.jit_compile)  # fmt: skip

    def make_augmenter():
        return build_augmenter(d.hflip, tuple(d.scale), d.translate, d.hue, d.saturation,
                               d.exposure, d.min_visibility)  # fmt: skip

    def train_dataset(shard=(1, 0), split=1):
        return make_train_dataset(
            train.records, cfg.model.input_size, anchors, d.batch_size, d.max_boxes,
            make_augmenter, seed=t.seed, parallel_calls=d.workers,  # -1 = AUTOTUNE
            iou_thresh=cfg.loss.iou_thresh, letterbox=d.letterbox,
            multiscale=tuple(d.multiscale) or None, multiscale_every=d.multiscale_every,
            start_step=done * steps, cache_mb=d.cache_mb, shard=shard, split=split,
        )  # fmt: skip

    if cluster.multi_worker:  # one input pipeline per worker, each reading its own slice
        train_ds = cluster.strategy.distribute_datasets_from_function(
            lambda ctx: train_dataset(
                (ctx.num_input_pipelines, ctx.input_pipeline_id),
                ctx.num_replicas_in_sync // ctx.num_input_pipelines,
            )
        )
    else:  # Keras splits each global batch over the replicas
        train_ds = train_dataset()
    sync = cluster.all_max if cluster.multi_worker else None
    spent = meta.get("seconds", 0.0) if meta else 0.0
    budget = TimeBudget(t.max_minutes, start, spent_before=spent, sync=sync)
    decay = [int(round(epoch * steps)) for epoch in t.steps]
    callbacks = [
        NonFiniteGuard(),
        LearningRateSchedule(
            lr, steps * t.epochs, int(t.warmup_epochs * steps), t.schedule,
            t.final_lr_fraction, budget, power=t.warmup_power, decay_steps=decay,
            factor=t.step_factor,
        ),
        budget,
    ]  # fmt: skip
    best, chief_only = None, None
    if cluster.is_chief:  # evaluation and the run directory's files: the chief's alone
        best = BestCocoAP(
            inference, val, coco_gt, run_dir, e.is_eval_epoch, best_ap=best_ap,
            patience=t.patience, image_dir=os.path.join(run_dir, "tensorboard", "images"),
            batch_size=e.batch_size, score_threshold=e.score_threshold,
            nms_iou=e.nms_iou, max_detections=e.max_detections,
        )  # fmt: skip
        csv_path = os.path.join(run_dir, "metrics.csv")
        chief_callbacks = [
            best,
            SaveLast(best, os.path.join(run_dir, "last.keras")),
            MetricsCSV(csv_path, ["lr", "loss", *TERMS, *STAT_NAMES],
                       plot_path=os.path.join(run_dir, "curves.png")),
        ]  # fmt: skip
        if cluster.multi_worker:  # an error in them must stop every worker, not hang them
            chief_only = ChiefOnly(chief_callbacks)
            chief_callbacks = [chief_only]
        callbacks += chief_callbacks
    callbacks.append(
        keras.callbacks.TensorBoard(os.path.join(write_dir, "tensorboard"), write_graph=False)
    )
    sync_stop = None
    if sync is not None:
        sync_stop = SyncStop(cluster.all_max, failed=lambda: bool(chief_only and chief_only.error))
        callbacks.append(sync_stop)
    # Last: it saves the state once everything above has finished with the epoch. The
    # other workers save theirs too (the saving may take part in collectives), elsewhere.
    callbacks.append(RunState(
        run_dir, write_dir=write_dir, restore=resume,
        extras=lambda: {"best_ap": best.best_ap if best else -1.0, "seconds": budget.spent()},
    ))  # fmt: skip
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
    if chief_only is not None and chief_only.error is not None:
        raise chief_only.error
    if sync_stop is not None and sync_stop.aborted:
        raise ClusterError("the chief failed during training (see its output); every worker "
                           "stopped at the end of the epoch")  # fmt: skip
    if budget.stopped:
        print(f"stopped after the {t.max_minutes:g}-minute budget")
    if not cluster.is_chief:
        return {}
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
