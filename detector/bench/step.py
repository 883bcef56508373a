"""The train step's figures, for `detector.bench.core`: ``pipeline_ratio`` (fit over the
real pipeline against the step on the same batches cached and the pipeline alone),
``loss_overhead`` (the YOLO-loss step against the same network with a plain MSE loss on
the same batches) and ``full_step_vs_matmul`` (the full-width Darknet-19 against a
float32 matmul), each side timed in alternating rounds (`detector.bench.rounds`).

FLOPs are counted as darknet counts them: a convolution costs 2·K·K·C_in·C_out·H_out·W_out
(a multiply and an add per weight and output); other layers are left out (they are < 1 %
of YOLOv2). A training step is counted as 3× the forward FLOPs (forward, gradient with
respect to the activations, gradient with respect to the weights).
"""

import time

from detector.bench.rounds import alternate, figure


def conv_flops(model, input_size: int) -> float:
    """Forward FLOPs of every Conv2D of `model` for one (input_size, input_size) image."""
    import keras

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    probe = keras.Model(model.inputs, [layer.output for layer in convs])
    outputs = probe.compute_output_spec(keras.KerasTensor((1, input_size, input_size, 3)))
    total = 0.0
    for layer, out in zip(convs, outputs, strict=True):
        kh, kw, c_in, c_out = layer.kernel.shape
        total += 2.0 * kh * kw * c_in * c_out * out.shape[1] * out.shape[2]
    return total


def fit_job(model, dataset, steps: int, batch: int, name: str):
    """A job (`alternate`) running `steps` train steps of `model` over `dataset`: wall and
    process-CPU seconds per image, as ``name`` and ``name + "_cpu"``."""

    def job() -> dict:
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        images = steps * batch
        return {name: (time.perf_counter() - wall) / images, f"{name}_cpu": _cpu(cpu) / images}

    return job


def iterate_job(dataset, batches: int, batch: int, name: str):
    """A job iterating a fresh iterator of `dataset` for `batches` batches (its start-up
    included, as `fit_job`'s is): wall and process-CPU seconds per image. The iterator is
    dropped at the end, so its loading threads do not run into the next job's round."""

    def job() -> dict:
        wall, cpu = time.perf_counter(), time.process_time()
        it = iter(dataset)
        for _ in range(batches):
            next(it)
        del it
        images = batches * batch
        return {name: (time.perf_counter() - wall) / images, f"{name}_cpu": _cpu(cpu) / images}

    return job


def _cpu(start: float) -> float:
    return time.process_time() - start


def training_models(cfg, train, plan):
    """(inference model, the run's compiled training model, the same network compiled
    with an MSE loss on its raw output): built as `detector.engine.run` builds them
    (``make_model``, ``make_training_model``), the MSE one with the same optimiser and the
    same XLA setting, so the two steps differ by their loss alone."""
    from detector.engine.build import make_model, make_optimizer, make_training_model

    inference = make_model(cfg, train, plan.anchors, init_weights=False)
    model = make_training_model(cfg, inference, cfg.train.lr)
    plain = make_model(cfg, train, plan.anchors, init_weights=False)
    plain.compile(optimizer=make_optimizer(cfg.train), loss="mse", jit_compile=model.jit_compile)
    return inference, model, plain


def step_figures(cfg, models, pipeline, steps: int, rounds: int) -> dict:
    """``pipeline_ratio`` and ``loss_overhead`` from one alternation of four jobs over the
    same `steps` batches (the pipeline's first ones, every round: same images, same
    multi-scale sizes): the YOLO step on them cached, the MSE step on them cached, ``fit``
    over the pipeline, the pipeline alone."""
    import tensorflow as tf

    _, model, plain = models
    batch = cfg.data.batch_size
    cached = pipeline.take(steps).cache()
    list(cached)  # fills the cache
    outputs = plain.output.shape[-2:]  # (anchors, 5 + classes)

    def raw_target(inputs, _):
        images = inputs[0]
        shape = tf.shape(images)
        grid = tf.stack([shape[0], shape[1] // 32, shape[2] // 32, *outputs])
        return images, tf.zeros(grid, tf.float32)

    jobs = {
        "yolo": fit_job(model, cached.repeat(), steps, batch, "step_yolo_s"),
        "mse": fit_job(plain, cached.map(raw_target).repeat(), steps, batch, "step_mse_s"),
        "fit": fit_job(model, pipeline, steps, batch, "fit_s"),
        "pipeline": iterate_job(pipeline, steps, batch, "pipeline_s"),
    }
    r = alternate(jobs, rounds)
    out = {k: min(v) for k, v in r.items()}
    out["step_ips"], out["fit_ips"] = 1 / out["step_yolo_s"], 1 / out["fit_s"]
    out["pipeline_ips"] = 1 / out["pipeline_s"]
    out["step_cpu_ms"] = 1000 * out["step_yolo_s_cpu"]
    out["pipeline_cpu_ms"] = 1000 * out["pipeline_s_cpu"]
    out.update(figure("pipeline_ratio", r, _pipeline_ratio, "fit_s", "pipeline_s", "step_yolo_s"))
    out.update(figure("loss_overhead", r, _overhead, "step_yolo_s", "step_mse_s"))
    if not tf.config.list_physical_devices("GPU"):  # the step and the loader share the cores
        sides = ("step_yolo_s_cpu", "pipeline_s_cpu")
        out.update(figure("pipeline_ratio_bound", r, _bound, *sides))
    return out


def _pipeline_ratio(fit: float, pipeline: float, step: float) -> float:
    """fit images/s ÷ min(pipeline images/s, step images/s), from seconds per image."""
    return max(pipeline, step) / fit


def _overhead(yolo: float, mse: float) -> float:
    return (yolo - mse) / yolo


def _bound(step_cpu: float, pipeline_cpu: float) -> float:
    """The ceiling of ``pipeline_ratio`` when the step and the loader share the cores."""
    return step_cpu / (step_cpu + pipeline_cpu)


def matmul_job(n: int, repeats: int):
    """A job timing `repeats` float32 (n, n) matmuls: seconds per FLOP as ``matmul_s``."""
    import tensorflow as tf

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    mm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))

    def job() -> dict:
        start = time.perf_counter()
        for _ in range(repeats):
            mm().numpy()
        return {"matmul_s": (time.perf_counter() - start) / (repeats * 2.0 * n**3)}

    return job


def full_model(classes: int, anchors, size: int, precision: str, jit: bool):
    """The full-width Darknet-19 (YOLOv2) at `size`, compiled with an MSE loss on its raw
    output under `precision`; returns (model, a zero target maker for a batch size)."""
    import keras
    import numpy as np

    from detector.model.network import build_inference_model

    keras.mixed_precision.set_global_policy(precision)
    full = build_inference_model(classes, anchors, "darknet19", 1.0, size)
    full.compile(optimizer="sgd", loss="mse", jit_compile=jit)
    return full, lambda b: np.zeros(full.compute_output_shape((b, size, size, 3)), np.float32)


def full_step_figures(classes: int, anchors, quick: bool, rounds: int) -> dict:
    """``full_step_vs_matmul``: the full-width Darknet-19 at 416, batch 4, float32 like
    the matmul it is alternated with: how close the convolutions get to the machine's
    dense-math ceiling (achieved GFLOP/s ÷ matmul GFLOP/s)."""
    import tensorflow as tf

    size, batch = (128, 2) if quick else (416, 4)  # quick: a smoke run, not the figure
    full, target = full_model(classes, anchors, size, "float32", False)
    x = tf.random.uniform((batch, size, size, 3), 0, 255)
    data = tf.data.Dataset.from_tensors((x, target(batch))).repeat()
    jobs = {
        "full": fit_job(full, data, 1 if quick else 2, batch, "full_step_s"),
        "matmul": matmul_job(512 if quick else 1024, 10 if quick else 40),
    }
    r = alternate(jobs, rounds)
    flops = 3 * conv_flops(full, size)
    out = {"full_train_flops_per_image": flops}
    out["full_step_ips"] = 1 / min(r["full_step_s"])
    out["full_step_gflops"] = flops * out["full_step_ips"] / 1e9
    out["matmul_gflops"] = 1e-9 / min(r["matmul_s"])
    ratio = figure("full_step_vs_matmul", r, lambda s, m: m * flops / s, "full_step_s", "matmul_s")
    return {**out, **ratio}
