"""What a run's config becomes once its training data is known: the steps of an epoch,
the resolved config (anchors, class weights, run directory, what the data allows), and
`dry_plan`, the plan of a run that writes nothing (for the bench)."""

import dataclasses

from detector.config.schema import Config, DataConfig
from detector.data.records import Dataset
from detector.engine import build
from detector.engine.class_weights import choose_class_weights
from detector.engine.plan import RunPlan


def steps_per_epoch(cfg: Config, train: Dataset) -> int:
    """Training steps per epoch (full batches); ValueError when there is none."""
    steps = len(train.records) // cfg.data.batch_size
    if steps == 0:
        raise ValueError(
            f"data.batch_size: {cfg.data.batch_size} exceeds the {len(train.records)} "
            "training images"
        )
    return steps


def resolve_for_data(
    cfg: Config, train: Dataset, anchors: list, run_dir: str, class_weights
) -> Config:
    """The config a run records and builds from: its anchors, class weights and run
    directory filled in, and what the training data allows (`without_mosaic_if_packed`)."""
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, anchors=anchors, num_anchors=len(anchors)),
        data=without_mosaic_if_packed(cfg.data, train),
        loss=dataclasses.replace(cfg.loss, class_weights=class_weights),
        train=dataclasses.replace(cfg.train, run_dir=run_dir),
    )


def dry_plan(cfg: Config, train: Dataset) -> RunPlan:
    """The plan of a new single-process run of `cfg` (devices resolved: `resolve_devices`)
    on `train`, deciding what `prepare_run` decides about the data (anchors, steps, the
    resolved config) but writing nothing and claiming no run directory: for measuring
    what a run builds (`detector.bench`)."""
    steps, t = steps_per_epoch(cfg, train), cfg.train
    anchors = build.choose_anchors(cfg.model, train, seed=t.seed, letterbox=cfg.data.letterbox)
    weights = choose_class_weights(cfg.loss, train)
    resolved = resolve_for_data(cfg, train, anchors, t.run_dir, weights)
    return RunPlan(resolved, t.run_dir, t.run_dir, anchors, steps, lr=t.lr)


def without_mosaic_if_packed(data: DataConfig, train: Dataset) -> DataConfig:
    """`data`, or with mosaic and mixup off (printed; config.yaml records it) when the
    training records are packed shards, which give one example at a time."""
    if not train.records.packed or not (data.mosaic or data.mixup):
        return data
    print(
        f"data.mosaic / data.mixup ({data.mosaic:g} / {data.mixup:g}): not available with "
        "packed records; this run trains without them (train from the dataset spec's "
        "record list to use them)"
    )
    return dataclasses.replace(data, mosaic=0.0, mixup=0.0)
