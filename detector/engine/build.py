"""The one place a `Config` becomes objects.

Every function here reads config sections and hands plain keyword arguments to the
layers, models, pipeline and callbacks, which never see a config object (detectron2's
``from_config`` idea). ``training.run`` calls them in order: anchors → model → loss →
optimizer → training model → input pipeline → callbacks.
"""

import os

import keras
import numpy as np

from detector.config.schema import (
    Config,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    config_to_dict,
)
from detector.data.albu import build_stage
from detector.data.augment import build_augmenter
from detector.data.pipeline import TrainInput
from detector.data.records import Dataset
from detector.engine.callbacks.best import KeepBest
from detector.engine.callbacks.checkpoints import SaveLast
from detector.engine.callbacks.coco_ap import BestCocoAP
from detector.engine.callbacks.distribute import ChiefOnly, SyncStop
from detector.engine.callbacks.early_stop import EarlyStop
from detector.engine.callbacks.guards import NonFiniteGuard
from detector.engine.callbacks.images import ValImages
from detector.engine.callbacks.logs import MetricsCSV
from detector.engine.callbacks.mlflow_logger import MlflowLogger
from detector.engine.callbacks.mosaic import CloseMosaic
from detector.engine.callbacks.schedule import LearningRateCallback, TimeBudget
from detector.engine.callbacks.state import RunState
from detector.engine.callbacks.user import UserEvents
from detector.engine.callbacks.wandb_logger import WandbLogger
from detector.engine.devices import resolve_jit_compile
from detector.engine.distribute import Cluster
from detector.engine.eval_copy import EvalCopy
from detector.engine.plan import RunPlan
from detector.engine.run_callbacks import RunCallbacks
from detector.engine.schedule import DarknetSchedule
from detector.evaluation.coco import STAT_NAMES
from detector.model.anchors import box_shapes, kmeans_anchors, mean_best_iou
from detector.model.loss import TERMS, YoloLoss, identity_loss
from detector.model.network import build_inference_model, build_training_model, freeze_layers

# the epoch numbers metrics.csv keeps and the experiment trackers log
EPOCH_COLUMNS = ["lr", "loss", *TERMS, *STAT_NAMES]


def choose_anchors(model: ModelConfig, train: Dataset, *, seed: int, letterbox: bool) -> list:
    """The configured anchors, or k-means clusters of the training boxes (grid cells)."""
    if model.anchors != "auto":
        return model.anchors
    wh = box_shapes(train.records, model.input_size, letterbox)
    anchors = kmeans_anchors(wh, model.num_anchors, seed=seed)
    fit = mean_best_iou(wh, anchors)
    shown = np.round(anchors.astype(np.float64), 3).tolist()
    print(f"anchors (k-means, grid cells): {shown}, mean best IoU {fit:.3f}")
    return anchors.tolist()


def make_augmenter(data: DataConfig):
    """The training augmentation of ``data.*``, with the user's albumentations stage of
    ``data.albumentations`` (which builds one Compose per loading thread itself)."""
    return build_augmenter(
        hflip=data.hflip,
        scale=tuple(data.scale),
        translate=data.translate,
        hue=data.hue,
        saturation=data.saturation,
        exposure=data.exposure,
        min_visibility=data.min_visibility,
        stage=build_stage(data.albumentations, min_visibility=data.min_visibility),
    )


def make_model(cfg: Config, train: Dataset, anchors, *, init_weights: bool) -> keras.Model:
    """The inference model for the training split's classes (+ ``model.init_weights``
    when `init_weights`, i.e. not for a resumed run, whose state replaces them), its first
    ``train.freeze`` convolutions frozen."""
    model = build_inference_model(
        len(train.names),
        anchors,
        cfg.model.variant,
        cfg.model.width,
        cfg.model.input_size,
        class_names=train.names,
        category_ids=train.category_ids,
        letterbox=cfg.data.letterbox,
        sync_bn=cfg.train.sync_batchnorm,
    )
    path = cfg.model.init_weights
    if path and init_weights:
        from detector.darknet import load_init_weights

        loaded, total = load_init_weights(model, path)
        print(f"init weights: {loaded} of {total} conv layers loaded from {path}")
    if cfg.train.freeze:
        frozen = freeze_layers(model, cfg.train.freeze)
        print(f"train.freeze: conv_1..conv_{frozen} and their BatchNorm frozen")
    return model


def eval_kwargs(e: EvalConfig) -> dict:
    """The prediction settings of ``eval.*`` (``evaluate_model``'s keyword arguments), so
    that training, its final report and evaluate.py score a model alike."""
    return {
        "batch_size": e.batch_size,
        "score_threshold": e.score_threshold,
        "nms_iou": e.nms_iou,
        "max_detections": e.max_detections,
    }


def make_loss(loss: LossConfig, *, anchors, num_classes: int) -> YoloLoss:
    """The YoloLoss layer with the config's scales and class weights (``auto`` resolved
    by ``run.prepare_run``: `detector.engine.class_weights`)."""
    return YoloLoss(
        anchors,
        num_classes,
        coord_scale=loss.coord_scale,
        object_scale=loss.object_scale,
        noobject_scale=loss.noobject_scale,
        class_scale=loss.class_scale,
        ignore_thresh=loss.ignore_thresh,
        rescore=loss.rescore,
        warmup_images=loss.warmup_images,
        prior_scale=loss.prior_scale,
        objectness=loss.objectness,
        box=loss.box,
        class_weights=None if loss.class_weights == "none" else loss.class_weights,
        xla=loss.xla,
        name="yolo_loss",
    )


def check_steps_per_execution(train: TrainConfig, steps: int) -> None:
    """ValueError unless ``train.steps_per_execution`` divides an epoch's `steps` (Keras
    runs whole executions, so each epoch would run extra steps, moving the data stream and
    the schedule away from what a resume recomputes)."""
    if steps % train.steps_per_execution:
        raise ValueError(
            f"train.steps_per_execution: {train.steps_per_execution} does not divide the "
            f"{steps} steps of an epoch (training images // data.batch_size); use a divisor"
        )


def make_schedule(train: TrainConfig, *, lr: float, steps: int) -> DarknetSchedule:
    """The run's learning rate: burn-in then ``train.schedule``, peak `lr`, over
    ``train.epochs`` epochs of `steps` steps (create it inside the strategy's scope: it
    holds the time-budget variable).

    Raises:
        ValueError: ``train.steps_per_execution`` does not divide `steps`
            (`check_steps_per_execution`).
    """
    check_steps_per_execution(train, steps)
    return DarknetSchedule(
        base_lr=lr,
        total_steps=steps * train.epochs,
        warmup_steps=int(train.warmup_epochs * steps),
        schedule=train.schedule,
        final_fraction=train.final_lr_fraction,
        power=train.warmup_power,
        decay_steps=[int(round(epoch * steps)) for epoch in train.steps],
        factor=train.step_factor,
    )


def make_optimizer(train: TrainConfig, lr=None) -> keras.optimizers.Optimizer:
    """The configured optimiser.

    Args:
        train: TrainConfig.
        lr: float, LearningRateSchedule or None. The learning rate (the run passes its
            `make_schedule`, evaluated inside the train step). Defaults to ``train.lr``.

    SGD (darknet's) and AdamW decay the conv kernels only, not BatchNorm or biases.
    """
    lr = train.lr if lr is None else lr
    common = {
        "global_clipnorm": train.clip_norm or None,
        "use_ema": train.ema_momentum > 0,
        "ema_momentum": train.ema_momentum or 0.99,
    }
    if train.optimizer == "adam":
        return keras.optimizers.Adam(lr, **common)
    if train.optimizer == "sgd":
        decay = {"momentum": train.momentum, "weight_decay": train.weight_decay}
        optimizer = keras.optimizers.SGD(lr, **decay, **common)
    else:
        optimizer = keras.optimizers.AdamW(lr, weight_decay=train.weight_decay, **common)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def make_training_model(cfg: Config, inference: keras.Model, lr) -> keras.Model:
    """The inference model wrapped with the loss layer, compiled with the identity loss,
    ``train.jit_compile`` and ``train.steps_per_execution`` (call it inside the
    strategy's scope; `lr` as `make_optimizer`'s). ``jit_compile: auto`` is resolved for
    the current strategy and devices (`detector.engine.devices.resolve_jit_compile`; ``run``
    passes it resolved already). Under ``mixed_float16`` Keras wraps the optimiser in a
    ``LossScaleOptimizer`` itself."""
    import tensorflow as tf

    head = inference.get_layer("yolo_head")
    loss = make_loss(cfg.loss, anchors=head.anchors, num_classes=len(head.class_names))
    model = build_training_model(inference, loss, cfg.data.max_boxes)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    gpus = len(tf.config.list_physical_devices("GPU"))
    jit, _ = resolve_jit_compile(cfg.train.jit_compile, replicas, gpus)
    model.compile(
        optimizer=make_optimizer(cfg.train, lr),
        loss=identity_loss,
        jit_compile=jit,
        steps_per_execution=cfg.train.steps_per_execution,
    )
    return model


def make_train_input(cfg: Config, train: Dataset, plan: RunPlan) -> TrainInput:
    """The training pipeline's inputs, starting where the plan's epochs left the stream."""
    data = cfg.data
    return TrainInput(
        records=train.records,
        input_size=cfg.model.input_size,
        anchors=plan.anchors,
        batch_size=data.batch_size,
        max_boxes=data.max_boxes,
        make_augmenter=lambda: make_augmenter(data),
        seed=cfg.train.seed,
        parallel_calls=data.workers,  # -1 = AUTOTUNE
        iou_thresh=cfg.loss.iou_thresh,
        letterbox=data.letterbox,
        multiscale=tuple(data.multiscale) or None,
        multiscale_every=data.multiscale_every,
        start_step=plan.done * plan.steps,
        cache_mb=data.cache_mb,
        mosaic=data.mosaic,
        mixup=data.mixup,
        mosaic_until=_mosaic_until(cfg, plan),
        mosaic_switch=plan.mosaic_switch,
    )


def _mosaic_until(cfg: Config, plan: RunPlan) -> int | None:
    """Stream position where ``train.close_mosaic`` turns mosaic off: the last N epochs
    (>= 1), or without a time budget the last fraction of the epochs (< 1); None when it
    never does or the time budget decides (`CloseMosaic`)."""
    close, train = cfg.train.close_mosaic, cfg.train
    if close <= 0 or (close < 1 and train.max_minutes > 0):
        return None
    epochs = train.epochs - close if close >= 1 else train.epochs * (1 - close)
    return max(0, round(epochs * plan.steps)) * cfg.data.batch_size


def make_loggers(cfg: Config, plan: RunPlan) -> list:
    """The experiment trackers of ``train.loggers``, in its order (their packages are
    checked before the run starts: `detector.engine.callbacks.trackers.require`)."""
    t = cfg.train
    common = {
        "run_dir": plan.run_dir,
        "config": config_to_dict(cfg),
        "columns": EPOCH_COLUMNS,
        "project": t.project,
        "resume": plan.resume,
    }
    make = {
        "mlflow": lambda: MlflowLogger(uri=t.mlflow_uri, **common),
        "wandb": lambda: WandbLogger(mode=t.wandb_mode, **common),
    }
    return [make[name]() for name in t.loggers]


def make_callbacks(
    cfg: Config,
    *,
    plan: RunPlan,
    cluster: Cluster,
    inference,
    val,
    coco_gt,
    start: float,
    schedule: DarknetSchedule,
    user: list | None = None,
) -> RunCallbacks:
    """The run's callbacks, in an order that matters (Keras calls them in list order).
    `schedule` is the optimiser's (`make_schedule`): TimeBudget writes the share of the
    budget spent into it, LearningRateCallback reads the lr from it. `user`: the user's
    callbacks (``train.callbacks``, then ``run(callbacks=...)``'s).

    The order and why: `detector.engine.callbacks` (the package's docstring).
    """
    out = _head_callbacks(cfg.train, plan, cluster, start, schedule)
    if cluster.is_chief:
        chief = _chief_callbacks(cfg, plan, out, inference, val, coco_gt, list(user or []))
        if cluster.multi_worker:
            out.chief_only = ChiefOnly(chief)
            chief = [out.chief_only]
        out.callbacks += chief
    _add_tail_callbacks(out, plan, cluster)
    return out


def _head_callbacks(train, plan: RunPlan, cluster: Cluster, start: float, schedule):
    """`make_callbacks`' 1-3: NonFiniteGuard, LearningRateCallback, TimeBudget and
    CloseMosaic, in a new `RunCallbacks`."""
    sync = cluster.all_max if cluster.multi_worker else None
    budget = TimeBudget(
        train.max_minutes,
        start,
        spent_before=plan.spent,
        sync=sync,
        share=schedule.time_fraction,
    )
    out = RunCallbacks([NonFiniteGuard(), LearningRateCallback(schedule), budget], budget)
    if 0 < train.close_mosaic < 1 and train.max_minutes > 0:
        out.callbacks.append(
            CloseMosaic(plan.mosaic_switch, budget, train.close_mosaic, train.epochs)
        )
    return out


def _add_tail_callbacks(out: RunCallbacks, plan: RunPlan, cluster: Cluster) -> None:
    """`make_callbacks`' 6-8: TensorBoard (inside LateLogs with ``eval.async``), SyncStop
    (multi-worker) and RunState, appended to `out`."""
    tensorboard = keras.callbacks.TensorBoard(
        os.path.join(plan.write_dir, "tensorboard"), write_graph=False
    )
    if out.best is not None and out.best.late_logs is not None:
        out.best.late_logs.callbacks.append(tensorboard)  # eval.async: with the epoch's AP
    else:
        out.callbacks.append(tensorboard)
    if cluster.multi_worker:
        out.sync_stop = SyncStop(cluster.all_max, failed=out.chief_failed)
        out.callbacks.append(out.sync_stop)
    state = RunState(
        plan.run_dir, write_dir=plan.write_dir, restore=plan.resume, extras=out.state_extras
    )
    out.callbacks.append(state)


def _chief_callbacks(cfg: Config, plan: RunPlan, out: RunCallbacks, inference, val, gt, user):
    """[BestCocoAP, SaveLast, MetricsCSV, *user, *trackers] (``eval.async``: [BestCocoAP,
    SaveLast, LateLogs([MetricsCSV, *user, *trackers])]), the chief's alone; fills `out`'s
    best and its parts."""
    run_dir = plan.run_dir
    eval_copy = EvalCopy(inference)
    user = [*user, *make_loggers(cfg, plan)]
    out.keep_best = KeepBest(run_dir, best_ap=plan.best_ap)
    out.early_stop = EarlyStop(cfg.train.patience, stale=plan.stale)
    out.events = UserEvents(user)
    images = ValImages(os.path.join(run_dir, "tensorboard", "images"), val)
    out.best = BestCocoAP(
        eval_copy,
        val,
        gt,
        cfg.eval.is_eval_epoch,
        listeners=[images, out.keep_best, out.early_stop, out.events],
        background=cfg.eval.async_,
        cache_mb=cfg.eval.cache_mb,
        **eval_kwargs(cfg.eval),
    )
    csv = MetricsCSV(
        os.path.join(run_dir, "metrics.csv"),
        EPOCH_COLUMNS,
        plot_path=os.path.join(run_dir, "curves.png"),
    )
    on_saved = out.events.on_checkpoint if out.events.callbacks else None
    last = SaveLast(eval_copy, os.path.join(run_dir, "last.keras"), on_saved=on_saved)
    loggers = [csv, *user]
    if out.best.late_logs is not None:  # eval.async: the row waits for its epoch's AP
        out.best.late_logs.callbacks += loggers
        loggers = [out.best.late_logs]
    return [out.best, last, *loggers]
