"""The one place a `Config` becomes objects.

Every function here reads config sections and hands plain keyword arguments to the
layers, models, pipeline and callbacks, which never see a config object (detectron2's
``from_config`` idea). ``training.run`` calls them in order: anchors → model → loss →
optimizer → training model → input pipeline → callbacks.
"""

import dataclasses
import os

import keras
import numpy as np

from detector.anchors import box_shapes, kmeans_anchors, mean_best_iou
from detector.callbacks import MetricsCSV, NonFiniteGuard
from detector.checkpoints import BestCocoAP, EvalCopy, SaveLast
from detector.config import Config, DataConfig, EvalConfig, LossConfig, ModelConfig, TrainConfig
from detector.data.augment import build_augmenter
from detector.data.pipeline import TrainInput, make_train_dataset
from detector.data.records import Dataset
from detector.distribute import ChiefOnly, Cluster, SyncStop
from detector.evaluation import STAT_NAMES
from detector.loss import TERMS, YoloLoss, identity_loss
from detector.model import build_inference_model, build_training_model
from detector.schedule import LearningRateCallback, TimeBudget
from detector.state import RunState


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run decided before building anything (the config itself is never mutated).

    Attributes:
        config: Config. The resolved config (anchors and run directory filled in), as
            written to ``RUN_DIR/config.yaml``.
        run_dir: str. The run directory. write_dir: str. Where this process writes (the
            run directory, or a non-chief worker's temporary folder).
        anchors: list of [w, h]. In grid cells.
        steps: int. Training steps per epoch.
        lr: float. The peak learning rate (scaled by the replicas with train.scale_lr).
        resume: bool. Whether the state is restored from ``RUN_DIR/state``.
        done: int. Epochs completed before this session. Defaults to 0.
        best_ap: float. Best AP so far (-1: none). Defaults to -1.
        spent: float. Seconds spent by earlier sessions. Defaults to 0.
    """

    config: Config
    run_dir: str
    write_dir: str
    anchors: list
    steps: int
    lr: float
    resume: bool = False
    done: int = 0
    best_ap: float = -1.0
    spent: float = 0.0


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
    """The training augmentation of ``data.*`` (one per loading thread: not shareable)."""
    return build_augmenter(
        hflip=data.hflip,
        scale=tuple(data.scale),
        translate=data.translate,
        hue=data.hue,
        saturation=data.saturation,
        exposure=data.exposure,
        min_visibility=data.min_visibility,
    )


def make_model(cfg: Config, train: Dataset, anchors, *, init_weights: bool) -> keras.Model:
    """The inference model for the training split's classes (+ ``model.init_weights``
    when `init_weights`, i.e. not for a resumed run, whose state replaces them)."""
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
    """The YoloLoss layer with the config's scales."""
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
        name="yolo_loss",
    )


def make_optimizer(train: TrainConfig, lr: float | None = None) -> keras.optimizers.Optimizer:
    """The configured optimiser; its learning rate is then driven by
    ``schedule.LearningRateCallback`` (``lr``: the initial value, default ``train.lr``).

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


def make_training_model(cfg: Config, inference: keras.Model, lr: float) -> keras.Model:
    """The inference model wrapped with the loss layer, compiled with the identity loss
    (call it inside the strategy's scope)."""
    head = inference.get_layer("yolo_head")
    loss = make_loss(cfg.loss, anchors=head.anchors, num_classes=len(head.class_names))
    model = build_training_model(inference, loss, cfg.data.max_boxes)
    optimizer = make_optimizer(cfg.train, lr)
    model.compile(optimizer=optimizer, loss=identity_loss, jit_compile=cfg.train.jit_compile)
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
    )


def make_datasets(spec: TrainInput, cluster: Cluster):
    """The training stream: one pipeline per worker, each reading its own slice of every
    global batch (multi-worker), else one pipeline whose batches Keras splits."""
    if not cluster.multi_worker:
        return make_train_dataset(spec)

    def per_worker(ctx):
        replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        shard = (ctx.num_input_pipelines, ctx.input_pipeline_id)
        return make_train_dataset(spec, shard=shard, replicas_per_pipeline=replicas)

    return cluster.strategy.distribute_datasets_from_function(per_worker)


@dataclasses.dataclass
class RunCallbacks:
    """The ordered callbacks of `fit`, and the ones the caller asks after it.

    Attributes:
        callbacks: list of keras Callback. In the order of `make_callbacks`.
        budget: TimeBudget. best: BestCocoAP or None (non-chief workers).
        chief_only: ChiefOnly or None (multi-worker chief). sync_stop: SyncStop or None.
    """

    callbacks: list
    budget: TimeBudget
    best: BestCocoAP | None = None
    chief_only: ChiefOnly | None = None
    sync_stop: SyncStop | None = None

    def chief_failed(self) -> bool:
        """Whether a chief-only callback failed (multi-worker; `SyncStop` asks)."""
        return bool(self.chief_only and self.chief_only.error)

    def state_extras(self) -> dict:
        """What `RunState` saves beside the weights: the best AP and the time spent."""
        return {"best_ap": self.best.best_ap if self.best else -1.0, "seconds": self.budget.spent()}


def make_callbacks(
    cfg: Config, *, plan: RunPlan, cluster: Cluster, inference, val, coco_gt, start: float
) -> RunCallbacks:
    """The run's callbacks, in an order that matters (Keras calls them in list order):

    1. NonFiniteGuard first: it raises at a bad batch before any callback sees the epoch.
    2. LearningRateCallback: sets the lr before each batch; its epoch-end ``lr`` must be in
       the logs before MetricsCSV and TensorBoard write them.
    3. TimeBudget before BestCocoAP: a spent budget sets ``stop_training`` at the epoch
       end first, so that epoch's evaluation is the final one.
    4. The chief's own (BestCocoAP → SaveLast → MetricsCSV): the CSV row needs the AP
       BestCocoAP puts in the logs. In a multi-worker run they sit inside ChiefOnly, so an
       error in them stops every worker at the epoch end instead of stranding them.
    5. TensorBoard after everything that adds to the logs.
    6. SyncStop (multi-worker) after every callback that may stop training.
    7. RunState last: the state is saved once everything else is done with the epoch
       (best AP and time spent included).
    """
    train = cfg.train
    sync = cluster.all_max if cluster.multi_worker else None
    budget = TimeBudget(train.max_minutes, start, spent_before=plan.spent, sync=sync)
    schedule = LearningRateCallback(
        budget,
        base_lr=plan.lr,
        total_steps=plan.steps * train.epochs,
        warmup_steps=int(train.warmup_epochs * plan.steps),
        schedule=train.schedule,
        final_fraction=train.final_lr_fraction,
        power=train.warmup_power,
        decay_steps=[int(round(epoch * plan.steps)) for epoch in train.steps],
        factor=train.step_factor,
    )
    out = RunCallbacks([NonFiniteGuard(), schedule, budget], budget)
    if cluster.is_chief:
        out.best, chief = _chief_callbacks(cfg, plan, inference, val, coco_gt)
        if cluster.multi_worker:
            out.chief_only = ChiefOnly(chief)
            chief = [out.chief_only]
        out.callbacks += chief
    tensorboard = os.path.join(plan.write_dir, "tensorboard")
    out.callbacks.append(keras.callbacks.TensorBoard(tensorboard, write_graph=False))
    if sync is not None:
        out.sync_stop = SyncStop(cluster.all_max, failed=out.chief_failed)
        out.callbacks.append(out.sync_stop)
    state = RunState(
        plan.run_dir, write_dir=plan.write_dir, restore=plan.resume, extras=out.state_extras
    )
    out.callbacks.append(state)
    return out


def _chief_callbacks(cfg: Config, plan: RunPlan, inference, val, coco_gt):
    """(BestCocoAP, [BestCocoAP, SaveLast, MetricsCSV]): evaluation and the run
    directory's files, the chief's alone."""
    run_dir = plan.run_dir
    eval_copy = EvalCopy(inference)
    best = BestCocoAP(
        eval_copy,
        val,
        coco_gt,
        run_dir,
        cfg.eval.is_eval_epoch,
        best_ap=plan.best_ap,
        patience=cfg.train.patience,
        image_dir=os.path.join(run_dir, "tensorboard", "images"),
        **eval_kwargs(cfg.eval),
    )
    csv = MetricsCSV(
        os.path.join(run_dir, "metrics.csv"),
        ["lr", "loss", *TERMS, *STAT_NAMES],
        plot_path=os.path.join(run_dir, "curves.png"),
    )
    return best, [best, SaveLast(eval_copy, os.path.join(run_dir, "last.keras")), csv]
