"""``run(config)``: prepare the run → build (``detector.engine.build``) → ``fit`` → final report."""

import contextlib
import dataclasses
import json
import os
import reprlib
import time
import zlib

import keras
import yaml

from detector.config.schema import Config, EvalConfig, config_to_dict, save_config
from detector.data.coco import ground_truth
from detector.data.image_checks import MAX_PIXELS
from detector.data.records import Dataset
from detector.data.spec import load_dataset, overlap_warning, split_overlap
from detector.engine import build
from detector.engine.callbacks.guards import NonFiniteLoss
from detector.engine.callbacks.trackers import require
from detector.engine.callbacks.user import RunResult, load_callbacks, run_result
from detector.engine.class_weights import choose_class_weights
from detector.engine.devices import check_precision, run_settings
from detector.engine.distribute import Cluster, ClusterError, make_cluster, make_datasets
from detector.engine.faults import check_architecture, resumable
from detector.engine.plan import RunPlan
from detector.engine.resolve import resolve_for_data, steps_per_epoch
from detector.engine.state import resume_point, truncate_csv
from detector.evaluation.validate import validate
from detector.utils.runlock import LOCK_NAME, claim_run_dir, clean_temporaries, run_lock


class TrainingStopped(RuntimeError):
    """The run stopped on purpose with a message for the user (e.g. a non-finite loss)."""


def run(cfg: Config, resume: bool = False, callbacks=()) -> RunResult:
    """Trains as configured; returns the `RunResult`: the run directory, its checkpoints,
    the COCO metrics of ``best.keras`` on the val split (``best_metrics``; {} on the other
    workers of a multi-worker run, and for a resumed run with nothing left to do) and
    metrics.csv's rows.

    `callbacks`: keras Callbacks of the caller, after those of ``train.callbacks``
    (`detector.engine.callbacks.user`; a `detector.Callback` also gets the detector's
    events). They run on the chief only, where ``build.make_callbacks`` lists.

    With ``resume``, ``cfg.train.run_dir`` is an existing run whose state (weights,
    optimiser, EMA, epoch, best AP, time spent, data position) is restored from
    ``RUN_DIR/state``; training continues to ``cfg.train.epochs``. ``cfg`` is not changed.

    Under ``train.distribute`` (docs/distributed.md) every worker process calls this with
    the same config; only the chief (worker 0) writes the run directory, evaluates and
    returns the metrics. The mixed-precision policy is set for the
    run and restored after it. ``train.precision`` / ``train.jit_compile`` ``auto`` are
    resolved for this machine first (`detector.engine.devices.run_settings`, printed); the
    resolved values are what the run uses and what its config.yaml records.
    """
    start = time.monotonic()
    cluster = make_cluster(cfg.train.distribute, cfg.train.devices)  # before any TF work
    cfg, line = resolve_devices(cfg, cluster.num_replicas)
    print(line)
    policy = keras.mixed_precision.global_policy()
    try:
        with contextlib.ExitStack() as locks:  # the run directory's lock, held to the end
            return _run(cfg, resume, cluster, start, locks, list(callbacks))
    finally:
        keras.mixed_precision.set_global_policy(policy)
        cluster.cleanup()


def resolve_devices(cfg: Config, num_replicas: int) -> tuple[Config, str]:
    """(`cfg` with ``train.precision`` and ``train.jit_compile`` resolved for this process,
    the line a run prints first): `detector.engine.devices.run_settings`."""
    t = cfg.train
    precision, jit, line = run_settings(t.precision, t.jit_compile, num_replicas)
    return dataclasses.replace(
        cfg, train=dataclasses.replace(t, precision=precision, jit_compile=jit)
    ), line


def _run(
    cfg: Config, resume: bool, cluster: Cluster, start: float, locks: contextlib.ExitStack, user
) -> RunResult:
    # The chief reads the data first: a synthetic spec is generated on first use, by it alone.
    with _all_or_none(cluster, "to read the data"):
        check_precision(cfg.train.precision)  # every worker, before any collective
        user = load_callbacks(cfg.train.callbacks) + user  # every worker: the same errors
        require(cfg.train.loggers)  # their packages, before the run directory is touched
        splits = read_splits(cfg.data.spec, cfg.data.max_pixels) if cluster.is_chief else None
    with _all_or_none(cluster, "to set up"):
        train, val = splits or read_splits(cfg.data.spec, cfg.data.max_pixels)
        plan = prepare_run(cfg, resume, cluster, train, locks=locks)
        coco_gt = ground_truth(val) if cluster.is_chief else None  # before any collective
    cfg = plan.config  # resolved: anchors, run directory, what the data allows
    if cluster.multi_worker:
        _check_workers_agree(cluster, cfg, len(train.records), plan.done, plan.run_dir)
    if resume and plan.done >= cfg.train.epochs:
        return run_result(plan.run_dir, _finished(plan, val, cfg.eval, cluster))
    announce(plan, cluster, len(train.records), len(val.records))
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    with cluster.strategy.scope():
        inference = build.make_model(cfg, train, plan.anchors, init_weights=not plan.done)
        schedule = build.make_schedule(cfg.train, lr=plan.lr, steps=plan.steps)
        model = build.make_training_model(cfg, inference, schedule)
    dataset = make_datasets(build.make_train_input(cfg, train, plan), cluster)
    callbacks = build.make_callbacks(
        cfg,
        plan=plan,
        cluster=cluster,
        inference=inference,
        val=val,
        coco_gt=coco_gt,
        start=start,
        schedule=schedule,
        user=user,
    )
    try:
        return _train(model, dataset, cfg, plan, val, cluster, callbacks)
    except BaseException as error:
        if callbacks.events is not None:  # the chief's detector.Callbacks (trackers: end)
            callbacks.events.on_run_failed(error)
        raise


def _train(model, dataset, cfg: Config, plan: RunPlan, val, cluster, callbacks) -> RunResult:
    """``fit``, then the chief's final report and ``on_run_end``; returns the RunResult."""
    fit(model, dataset, cfg.train.epochs, plan, callbacks)
    if callbacks.budget.stopped:
        print(f"stopped after the {cfg.train.max_minutes:g}-minute budget")
    if not cluster.is_chief:
        return run_result(plan.run_dir, {})
    result = run_result(plan.run_dir, final_report(plan.run_dir, val, cfg.eval))
    callbacks.events.on_run_end(result)
    return result


@contextlib.contextmanager
def _all_or_none(cluster: Cluster, what: str):
    """Runs the block; an error on one worker stops every worker (`Cluster.agree`)."""
    try:
        yield
    except Exception:
        cluster.agree(False, what)
        raise
    cluster.agree(True, what)


def read_splits(spec: str, max_pixels: int = MAX_PIXELS) -> tuple[Dataset, Dataset]:
    """The train and val splits of a dataset spec, their data problems printed once, and
    a warning when they share images. `max_pixels`: `data.max_pixels`."""
    train, val = (load_dataset(spec, s, max_pixels=max_pixels) for s in ("train", "val"))
    if (train.names, train.category_ids) != (val.names, val.category_ids):
        shown = [
            reprlib.repr(dict(zip(d.category_ids, d.names, strict=True))) for d in (train, val)
        ]
        raise ValueError(
            f"{spec}: the train and val splits have different classes (train {shown[0]}, "
            f"val {shown[1]}): give both the same categories in the same order"
        )
    report_problems("train", train)
    report_problems("val", val)
    shared = split_overlap(train, val)
    if shared:
        print(overlap_warning("train", "val", shared))
    return train, val


def report_problems(name: str, dataset: Dataset) -> None:
    """Prints the data problems the readers and the image check counted, once, before
    training; an empty split is an error."""
    print(dataset.problems.report(f"{name} ({len(dataset.records)} images)"))
    if not dataset.records:
        raise ValueError(f"the {name} split has no usable image (see the problems above)")


def prepare_run(
    cfg: Config, resume: bool, cluster: Cluster, train: Dataset, *, locks: contextlib.ExitStack
) -> RunPlan:
    """Checks the config against the data, picks the run directory, anchors and class
    weights, reads a resumed run's state, writes config.yaml (chief), returns the plan. The
    chief locks the run directory (`utils.runlock`) until `locks` closes; then Ctrl-C and
    faults from outside (data, disk) are reported with the way to continue
    (`faults.resumable`). Before anything is written, a resume refuses damaged state
    (`state.resume_point`) and a changed architecture (`faults.check_architecture`)."""
    d, t = cfg.data, cfg.train
    steps = steps_per_epoch(cfg, train)
    if d.batch_size % cluster.num_replicas:
        raise ValueError(
            f"data.batch_size: {d.batch_size} (the global batch) does not split "
            f"evenly over {cluster.num_replicas} replicas"
        )
    build.check_steps_per_execution(t, steps)  # these two before anything is written
    class_weights = choose_class_weights(cfg.loss, train)
    if resume and cluster.is_chief:  # locked before resolve() repairs its state
        locks.enter_context(run_lock(t.run_dir))
        clean_temporaries(t.run_dir)
    meta = resume_point(t.run_dir, repair=cluster.is_chief) if resume else None
    if cfg.model.init_weights and not meta and not os.path.isfile(cfg.model.init_weights):
        raise ValueError(f"model.init_weights: file not found: {cfg.model.init_weights}")
    if resume:
        check_architecture(cfg, t.run_dir, train.names)
        run_dir, anchors = t.run_dir, cfg.model.anchors
    else:
        run_dir = new_run_dir(t.run_dir, cluster, locks)
        anchors = build.choose_anchors(cfg.model, train, seed=t.seed, letterbox=d.letterbox)
    resolved = resolve_for_data(cfg, train, anchors, run_dir, class_weights)
    done = meta["epoch"] if meta else 0
    if cluster.is_chief:
        os.makedirs(run_dir, exist_ok=True)
        save_config(resolved, os.path.join(run_dir, "config.yaml"))
        truncate_csv(os.path.join(run_dir, "metrics.csv"), done)
    locks.enter_context(resumable(run_dir, data=cfg.data.spec, **_shards_of(train)))
    return RunPlan(
        config=resolved,
        run_dir=run_dir,
        write_dir=cluster.write_dir(run_dir),
        anchors=anchors,
        steps=steps,
        lr=t.lr * (cluster.num_replicas if t.scale_lr else 1),
        resume=resume,
        done=done,
        **(best_so_far(run_dir, meta, resume) if cluster.is_chief else {}),
        spent=meta.get("seconds", 0.0) if meta else 0.0,
    )


def _shards_of(train: Dataset) -> dict:
    """The packed training shards and their record counts, for `resumable` to name the
    damaged one; {} for a record list."""
    if not train.records.packed:
        return {}
    return {"shards": train.records.files, "counts": train.records.index["file_counts"]}


def new_run_dir(path: str, cluster: Cluster, locks: contextlib.ExitStack) -> str:
    """A fresh run directory, locked by the chief until `locks` closes: `path`, or a free
    ``-N`` variant of it (`detector.utils.runlock.claim_run_dir`, race-free). Every worker of a
    multi-worker run must name the same directory, so there it must be free as given."""
    if not cluster.multi_worker:
        return claim_run_dir(path, locks)
    if not cluster.is_chief:
        return path
    used = os.path.isdir(path) and [name for name in os.listdir(path) if name != LOCK_NAME]
    if used:  # checked before locking: a refused folder is left exactly as it was
        raise ValueError(
            f"run directory {path} is not empty: pass another --run-dir, or --resume it"
        )
    locks.enter_context(run_lock(path))
    return path


def best_so_far(run_dir: str, meta: dict | None, resume: bool) -> dict:
    """A resumed run's ``best_ap`` and ``stale`` (evaluations since it, for
    ``train.patience``): its state's, or best.json's AP and 0 when a best was saved after
    the last state. A new run: {"best_ap": -1.0, "stale": 0}."""
    best_ap = meta.get("best_ap", -1.0) if meta else -1.0
    stale = int(meta.get("stale", 0)) if meta else 0
    best_json = os.path.join(run_dir, "best.json")
    if resume and os.path.isfile(best_json):
        with open(best_json) as f:
            saved = json.load(f).get("AP", -1.0)
        if saved > best_ap:
            best_ap, stale = saved, 0
    return {"best_ap": best_ap, "stale": stale}


def announce(plan: RunPlan, cluster: Cluster, num_train: int, num_val: int) -> None:
    """Prints where the run writes, what it resumes and how it is distributed."""
    if plan.resume:
        print(
            f"resuming {plan.run_dir} after epoch {plan.done}"
            if plan.done
            else f"{plan.run_dir}: no completed epoch saved yet, starting it again"
        )
    where = (
        ""
        if cluster.is_chief
        else (f"; this worker ({cluster.worker_index}) writes to {plan.write_dir} only")
    )
    print(f"run directory: {plan.run_dir}  ({num_train} train / {num_val} val images){where}")
    if cluster.kind != "none":
        n, batch = cluster.num_replicas, plan.config.data.batch_size
        print(
            f"distribute: {cluster.kind}, {n} replicas on {cluster.num_workers} worker(s); "
            f"global batch {batch} = {n} x {batch // n}; lr {plan.lr:g}"
        )


def _check_workers_agree(cluster: Cluster, cfg: Config, images: int, done: int, run_dir: str):
    """Multi-worker: the same training set, config and restored epoch on every worker,
    else a `ClusterError` naming what differs (before the first step, not a hang later)."""
    if not cluster.same_everywhere(images):
        raise ClusterError(
            f"the workers read different training sets (this one: {images} "
            "images): every worker needs the same dataset"
        )
    digest = zlib.crc32(yaml.safe_dump(config_to_dict(cfg), sort_keys=True).encode()) & 0xFFFFFF
    if not cluster.same_everywhere(digest):  # 24 bits: exact in float32
        raise ClusterError(
            "the workers run different configs (same config file, --epochs "
            "and --set on every worker)"
        )
    if not cluster.same_everywhere(done):
        raise ClusterError(
            f"the workers restored different epochs from {os.path.join(run_dir, 'state')} "
            f"(this one: {done}): a resumed multi-worker run needs its run directory on a "
            "filesystem every worker reads (docs/distributed.md)"
        )


def fit(model, dataset, epochs: int, plan: RunPlan, callbacks: build.RunCallbacks) -> None:
    """``model.fit`` with the run's ways of stopping turned into messages."""
    verbose = 2 if os.environ.get("CI") else 1
    try:
        model.fit(
            dataset,
            epochs=epochs,
            steps_per_epoch=plan.steps,
            callbacks=callbacks.callbacks,
            shuffle=False,
            verbose=verbose,
        )
    except NonFiniteLoss as error:
        _land_evaluation(callbacks)
        raise TrainingStopped(str(error)) from None
    except BaseException:
        _land_evaluation(callbacks)
        raise
    if callbacks.chief_only is not None and callbacks.chief_only.error is not None:
        raise callbacks.chief_only.error
    if callbacks.sync_stop is not None and callbacks.sync_stop.aborted:
        raise ClusterError(
            "the chief failed during training (see its output); every worker "
            "stopped at the end of the epoch"
        )


def _land_evaluation(callbacks: build.RunCallbacks) -> None:
    """On the way out of a failed ``fit``: the evaluation in flight (``eval.async``) is
    landed (`BestCocoAP.land_pending`); its own failure is not the run's first error."""
    if callbacks.best is None:
        return
    with contextlib.suppress(Exception):
        callbacks.best.land_pending()


def _finished(plan: RunPlan, val: Dataset, e: EvalConfig, cluster: Cluster) -> dict:
    """A ``--resume`` of a run that has trained all its epochs: writes its final report if
    the run stopped before it was complete (Ctrl-C during it), else nothing to do."""
    report = os.path.join(plan.run_dir, "val", "report.json")
    best = os.path.join(plan.run_dir, "best.keras")
    if cluster.is_chief and os.path.isfile(best) and not os.path.isfile(report):
        print(f"{plan.run_dir} has finished its {plan.done} epochs; its final report is missing")
        return final_report(plan.run_dir, val, e)
    print(
        f"{plan.run_dir} has finished its {plan.done} epochs: nothing to do (pass a "
        "larger --epochs to extend it)"
    )
    return {}


def final_report(run_dir: str, val: Dataset, e: EvalConfig) -> dict:
    """Loads ``best.keras`` back from disk, prints its COCO table and validation report
    and writes the report in ``RUN_DIR/val`` (`detector.evaluation.validate`); returns the
    metrics."""
    path = os.path.join(run_dir, "best.keras")
    best = keras.models.load_model(path, safe_mode=True)
    input_size = best.get_layer("yolo_head").input_size
    print(f"\nbest checkpoint {path} on the val split:")
    summary = validate(
        best,
        val,
        out_dir=os.path.join(run_dir, "val"),
        input_size=input_size,
        predict_kwargs=build.eval_kwargs(e),
    )
    return summary["metrics"]
