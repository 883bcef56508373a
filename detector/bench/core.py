"""Where training and evaluation time goes, measured side by side in one process.

    python -m detector.bench [--config FILE] [--json OUT] [--quick]

Every number is a ratio of two timings taken here, one after the other, so that a noisy
shared machine cancels out as far as it can; see docs/performance.md for what each
number means and the targets.

FLOPs are counted as darknet counts them: a convolution costs 2·K·K·C_in·C_out·H_out·W_out
(a multiply and an add per weight and output); other layers are left out (they are < 1 %
of YOLOv2). A training step is counted as 3× the forward FLOPs (forward, gradient with
respect to the activations, gradient with respect to the weights: each about one
forward's worth of multiply-adds).

Evaluation: ``eval_ips`` is evaluation as a training run repeats it (validation images
kept in memory, ``eval.cache_mb``), ``eval_ips_first`` as evaluate.py runs it once.
``callback_share`` is measured both ways, ``_sync`` (evaluation at the epoch end) and
``_async`` (``eval.async``: only the time the training thread waits for the worker);
the headline is the mode the config runs (the wait-only share credits async with time it
does not save on a machine whose cores the worker shares: docs/performance.md).
"""

import argparse
import copy
import json
import math
import os
import resource
import sys
import time

import numpy as np

from detector.bench.pipeline import pipeline_alone, pipeline_cpu_timings
from detector.config.schema import DEFAULT_CONFIG

TARGETS = {
    "pipeline_ratio": (">=", 0.95),
    "loss_overhead": ("<=", 0.10),
    "full_step_vs_matmul": (">=", 0.50),
    "eval_vs_forward": (">=", 0.80),
    "callback_share": ("<=", 0.15),
    "pipeline_vs_decode": ("<=", 2.0),
    "pipeline_scaling": (">=", 1.8),
}


def conv_flops(model, input_size: int) -> float:
    """Forward FLOPs of every Conv2D of `model` for one (input_size, input_size) image."""
    import keras

    total = 0.0
    probe = keras.Model(model.inputs, [layer.output for layer in _convs(model)])
    outputs = probe.compute_output_spec(keras.KerasTensor((1, input_size, input_size, 3)))
    shapes = [o.shape for o in outputs]
    for layer, shape in zip(_convs(model), shapes, strict=True):
        kh, kw, c_in, c_out = layer.kernel.shape
        total += 2.0 * kh * kw * c_in * c_out * shape[1] * shape[2]
    return total


def _convs(model):
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def ratios(t: dict) -> dict:
    """The derived numbers from the measured ones (pure arithmetic, tested)."""
    out = dict(t)
    out["step_gflops"] = t["train_flops_per_image"] * t["step_ips"] / 1e9
    out["step_vs_matmul"] = out["step_gflops"] / t["matmul_gflops"]
    if "full_step_ips" in t:
        out["full_step_gflops"] = t["full_train_flops_per_image"] * t["full_step_ips"] / 1e9
        out["full_step_vs_matmul"] = out["full_step_gflops"] / t["matmul_gflops"]
    out["pipeline_ratio"] = t["fit_ips"] / min(t["pipeline_ips"], t["step_ips"])
    if t.get("accelerators") == 0 and "pipeline_cpu_ms" in t:  # both on the same cores
        out["pipeline_ratio_bound"] = t["step_cpu_ms"] / (t["step_cpu_ms"] + t["pipeline_cpu_ms"])
    out["loss_overhead"] = (t["step_seconds_yolo"] - t["step_seconds_mse"]) / t["step_seconds_yolo"]
    out["eval_vs_forward"] = t["eval_ips"] / t["forward_ips"]
    out["callback_share"] = t["eval_seconds_per_epoch"] / t["epoch_seconds"]
    cpu, decode = t.get("pipeline_ms_per_image", math.nan), t.get("decode_ms_per_image", 1)
    out["pipeline_vs_decode"] = cpu / decode  # nan: not measured
    two, one = t.get("pipeline_ips_2_calls", math.nan), t.get("pipeline_ips_1_call", 1)
    out["pipeline_scaling"] = two / one
    return out


def _timed(fn, repeats: int) -> float:
    """Seconds per call of `fn`: the fastest of `repeats` calls after a warm-up call."""
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """float32 matmul throughput: the machine's practical ceiling for dense math."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    mm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    seconds = _timed(lambda: mm().numpy(), repeats)
    return 2.0 * n**3 / seconds / 1e9


def _train_model(cfg, anchors, num_classes, variant, width, max_boxes, loss="yolo"):
    """(inference model, compiled model): the YOLO training model, or (`loss="mse"`) the
    inference model itself fitted to a raw target."""
    import keras

    from detector.engine.build import make_loss, make_optimizer
    from detector.model.loss import identity_loss
    from detector.model.network import build_inference_model, build_training_model

    inference = build_inference_model(num_classes, anchors, variant, width, cfg.model.input_size)
    jit = cfg.train.jit_compile
    if loss == "yolo":
        layer = make_loss(cfg.loss, anchors=anchors, num_classes=num_classes)
        model = build_training_model(inference, layer, max_boxes)
        model.compile(optimizer=make_optimizer(cfg.train), loss=identity_loss, jit_compile=jit)
    else:
        model = inference
        model.compile(optimizer=make_optimizer(cfg.train), loss="mse", jit_compile=jit)
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    return inference, model


def _interleaved_step_times(jobs, steps: int, rounds: int = 3) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) per train step of each (model, batch) job,
    measured in alternation, `rounds` times, keeping each job's fastest round: on a
    shared machine the slow rounds are the ones something else ran in."""
    import tensorflow as tf

    sets = [
        data if isinstance(data, tf.data.Dataset) else tf.data.Dataset.from_tensors(data).repeat()
        for _, data in jobs
    ]
    for (model, _), ds in zip(jobs, sets, strict=True):
        model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace
    best = [(math.inf, math.inf)] * len(jobs)
    for _ in range(rounds):
        for i, ((model, _), ds) in enumerate(zip(jobs, sets, strict=True)):
            wall, cpu = time.perf_counter(), time.process_time()
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
            took = ((time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps)
            best[i] = min(best[i], took)
    return best


def measure(cfg, quick: bool = False) -> dict:
    """Runs every measurement; returns the raw timings and the derived ratios."""
    import keras
    import tensorflow as tf

    from detector.data.pipeline import TrainInput, make_train_dataset
    from detector.data.spec import load_dataset
    from detector.engine.build import choose_anchors, make_augmenter
    from detector.engine.devices import resolve_precision

    precision = resolve_precision(cfg.train.precision)[0]
    cfg = copy.deepcopy(cfg)  # the resolved precision, for every model built here
    cfg.train.precision = precision
    keras.mixed_precision.set_global_policy(precision)
    d, m = cfg.data, cfg.model
    train, val = load_dataset(d.spec, "train"), load_dataset(d.spec, "val")
    anchors = choose_anchors(m, train, seed=cfg.train.seed, letterbox=d.letterbox)
    t: dict = {
        "config": {
            "variant": m.variant,
            "width": m.width,
            "input_size": m.input_size,
            "batch_size": d.batch_size,
            "precision": precision,
        },
        "accelerators": len(tf.config.list_physical_devices("GPU")),
    }
    spec = TrainInput(
        train.records,
        m.input_size,
        anchors,
        d.batch_size,
        d.max_boxes,
        lambda: make_augmenter(d),
        iou_thresh=cfg.loss.iou_thresh,
        letterbox=d.letterbox,
        cache_mb=d.cache_mb,
    )
    pipeline = make_train_dataset(spec)
    classes = len(train.names)
    inference, model = _train_model(cfg, anchors, classes, m.variant, m.width, d.max_boxes)
    t.update(_step_timings(cfg, anchors, classes, model, pipeline, quick))
    t["train_flops_per_image"] = 3 * conv_flops(inference, m.input_size)
    t["matmul_gflops"] = matmul_gflops(512 if quick else 1024)
    epoch_steps = 5 if quick else len(train.records) // d.batch_size
    t.update(_epoch_timings(cfg, inference, model, pipeline, val, epoch_steps))
    t.update(_inference_timings(cfg, inference, val, next(iter(pipeline))[0][0], quick))
    t.update(_full_model_timings(classes, anchors, quick))
    t.update(pipeline_cpu_timings(cfg, train.records, quick))
    t["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return ratios(t)


def _step_timings(cfg, anchors, classes: int, model, pipeline, quick: bool) -> dict:
    """The train step on one cached batch (YOLO loss and plain MSE), ``fit`` over the real
    pipeline, and the pipeline alone."""
    size, batch = cfg.model.input_size, cfg.data.batch_size
    first = next(iter(pipeline))
    m = cfg.model
    _, plain = _train_model(cfg, anchors, classes, m.variant, m.width, cfg.data.max_boxes, "mse")
    raw_target = np.zeros(plain.compute_output_shape((batch, size, size, 3)), np.float32)
    jobs = [(model, first), (plain, (first[0][0], raw_target)), (model, pipeline)]
    steps = 5 if quick else 30
    (yolo_s, yolo_cpu), (mse_s, _), (fit_s, _) = _interleaved_step_times(
        jobs, steps, rounds=2 if quick else 4
    )
    t = {"step_seconds_yolo": yolo_s, "step_seconds_mse": mse_s}
    t["step_ips"] = batch / yolo_s
    t["fit_ips"] = batch / fit_s
    t["step_cpu_ms"] = 1000 * yolo_cpu / batch  # of the fastest round
    # the input pipeline alone, in its steady state (the fits above filled any image cache)
    t.update(pipeline_alone(pipeline, batch, 5 if quick else 40))
    return t


def _epoch_timings(cfg, inference, model, pipeline, val, epoch_steps: int) -> dict:
    """Epochs over the real pipeline with the evaluation callback, evaluated at the epoch
    end (sync) and in a worker thread (``eval.async``): per mode the seconds the training
    thread waits in the callback per epoch, and the epoch's wall time with that wait. The
    headline is the config's mode (see the module docstring).
    """
    model.fit(pipeline, steps_per_epoch=2, epochs=1, verbose=0)
    out = {}
    for mode in ("sync", "async"):
        wait, wall = _callback_epochs(cfg, inference, model, pipeline, val, epoch_steps, mode)
        per_epoch = wait / cfg.eval.every  # only every `every`-th epoch is evaluated
        out[f"eval_wait_{mode}"] = per_epoch
        out[f"epoch_seconds_{mode}"] = wall - wait + per_epoch
        out[f"callback_share_{mode}"] = per_epoch / out[f"epoch_seconds_{mode}"]
    mode = "async" if cfg.eval.async_ else "sync"
    out["eval_seconds_per_epoch"] = out[f"eval_wait_{mode}"]
    out["epoch_seconds"] = out[f"epoch_seconds_{mode}"]
    return out


def _callback_epochs(cfg, inference, model, pipeline, val, steps: int, mode: str) -> tuple:
    """(seconds the training thread spends in BestCocoAP's epoch end, epoch wall seconds)
    of the last two of four evaluated epochs: the first two trace the predict function
    and fill the image cache (async collects epoch 1's evaluation at epoch 2's end)."""
    from detector.data.coco import ground_truth
    from detector.engine.build import eval_kwargs
    from detector.engine.callbacks.coco_ap import BestCocoAP
    from detector.engine.eval_copy import EvalCopy

    e = cfg.eval
    settings = {"background": mode == "async", "cache_mb": e.cache_mb, **eval_kwargs(e)}
    copy = EvalCopy(inference)
    best = BestCocoAP(copy, val, ground_truth(val), lambda epoch: True, **settings)  # saves nothing
    waits, walls, marks, epoch_end = [], [], {}, best.on_epoch_end

    def begin(epoch, logs=None):
        marks["begin"] = time.perf_counter()

    def end(epoch, logs=None):
        start = time.perf_counter()
        epoch_end(epoch, logs)
        waits.append(time.perf_counter() - start)
        walls.append(time.perf_counter() - marks["begin"])

    best.on_epoch_begin, best.on_epoch_end = begin, end
    model.fit(pipeline, steps_per_epoch=steps, epochs=4, verbose=0, callbacks=[best])
    return float(np.mean(waits[2:])), float(np.mean(walls[2:]))


def _inference_timings(cfg, inference, val, images, quick: bool) -> dict:
    """The compiled forward alone vs evaluation end to end, images/s: ``eval_ips`` as a
    training run evaluates (images kept in memory after the first pass, `eval.cache_mb`;
    no results list), ``eval_ips_first`` as evaluate.py does (images read, results kept)."""
    import tensorflow as tf

    from detector.data.coco import ground_truth
    from detector.evaluation.coco import EvalImages, evaluate_model
    from detector.inference.detector import make_predict_fn

    e, size = cfg.eval, cfg.model.input_size
    forward = tf.function(lambda x: inference(x, training=False))
    forward_s = _timed(lambda: forward(images).numpy(), 3 if quick else 10)
    predict = make_predict_fn(inference, e.score_threshold, e.nms_iou, e.max_detections)
    truth, cache = ground_truth(val), EvalImages(val.records, e.cache_mb)

    def run_eval(**how):
        how.update(batch_size=e.batch_size, predict_fn=predict)
        evaluate_model(inference, val, size, truth, **how)

    repeats = 3  # the fastest of 3 even when quick: one pass is at the mercy of the neighbours
    cached = _timed(lambda: run_eval(images=cache, keep_results=False), repeats)
    return {
        "forward_ips": int(images.shape[0]) / forward_s,
        "eval_ips": len(val.records) / cached,
        "eval_ips_first": len(val.records) / _timed(run_eval, repeats),
    }


def _full_model_timings(classes: int, anchors, quick: bool) -> dict:
    """The full-width Darknet-19 at 416, batch 4, in float32 like the matmul it is compared
    with: how close the convolutions get to the machine's dense-math ceiling."""
    import keras
    import tensorflow as tf

    from detector.model.network import build_inference_model

    full_size, full_batch = 416, 4
    keras.mixed_precision.set_global_policy("float32")
    full = build_inference_model(classes, anchors, "darknet19", 1.0, full_size)
    full.compile(optimizer="sgd", loss="mse")
    x = tf.random.uniform((full_batch, full_size, full_size, 3), 0, 255)
    y = np.zeros(full.compute_output_shape((full_batch, full_size, full_size, 3)), np.float32)
    seconds = _interleaved_step_times([(full, (x, y))], 2 if quick else 4, rounds=1)[0][0]
    return {
        "full_step_ips": full_batch / seconds,
        "full_train_flops_per_image": 3 * conv_flops(full, full_size),
    }


ROWS = (
    ("pipeline_ips", "input pipeline alone, images/s"),
    ("step_ips", "compiled train step on cached batches, images/s"),
    ("step_gflops", "  achieved GFLOP/s (3x forward conv FLOPs)"),
    ("matmul_gflops", "float32 matmul in this process, GFLOP/s"),
    ("step_vs_matmul", "  step / matmul"),
    ("full_step_ips", "full Darknet-19 @416, batch 4, images/s"),
    ("full_step_gflops", "  achieved GFLOP/s"),
    ("full_step_vs_matmul", "  full step / matmul"),
    ("fit_ips", "fit over the real pipeline, images/s"),
    ("pipeline_ratio", "  fit / min(pipeline, step)"),
    ("pipeline_ratio_bound", "  no accelerator: step CPU / (step + pipeline CPU), its ceiling"),
    ("loss_overhead", "(YoloLoss step - MSE step) / YoloLoss step"),
    ("forward_ips", "compiled forward on cached batches, images/s"),
    ("eval_ips", "evaluate as training does (cached images), images/s"),
    ("eval_ips_first", "  as evaluate.py does (images read, results list), images/s"),
    ("eval_vs_forward", "  eval / forward"),
    ("callback_share", "training thread's wait in BestCocoAP / epoch time (eval.async's mode)"),
    ("callback_share_sync", "  evaluating at the epoch end"),
    ("callback_share_async", "  eval.async: the wait only (epoch timed with the worker running)"),
    ("pipeline_ms_per_image", "training pipeline CPU time per image, ms (real JPEGs)"),
    ("decode_ms_per_image", "  plain JPEG decode (cv2.imdecode) of the same, ms"),
    ("pipeline_vs_decode", "  pipeline / decode"),
    ("pipeline_ips_1_call", "  pipeline with 1 parallel call, images/s"),
    ("pipeline_scaling", "  2 parallel calls / 1"),
    ("albumentations_ms_per_image", "data.albumentations stage, CPU ms per example (alternated)"),
    ("peak_rss_mb", "peak resident memory, MB"),
)


def format_table(r: dict) -> str:
    lines = [f"{'measure':<22} {'value':>10}  meaning"]
    for key, meaning in ROWS:
        if key in r:
            target = TARGETS.get(key)
            mark = ""
            if target:
                ok = r[key] >= target[1] if target[0] == ">=" else r[key] <= target[1]
                mark = f"  [target {target[0]} {target[1]}: {'met' if ok else 'MISSED'}]"
            lines.append(f"{key:<22} {r[key]:>10.3f}  {meaning}{mark}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detector.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--quick", action="store_true", help="a few steps of each (smoke run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    from detector.config.schema import load_config

    try:
        cfg = load_config(args.config, args.set)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = measure(cfg, quick=args.quick)
    print(format_table(results))
    if args.json:
        from detector.utils.atomic import atomic_write_text

        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_text(args.json, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
