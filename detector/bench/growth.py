"""How cost grows with the size of the work, each figure a ratio measured in one run.

    python -m detector.bench growth [--config FILE] [--set KEY=VALUE] [--json OUT]
                                    [--quick] [--jpegs SPEC] [--dir DIR]

``eval_growth``: evaluation seconds per image on a synthetic COCO-like validation set of
5 000 images × 80 classes ÷ the same on 500 images (both generated on the fly: 128-px
JPEGs with 1-14 boxes, an untrained YOLOv2-tiny w0.5 at 128 px, float32, as a training
run evaluates: images kept in memory, ``eval.*``'s thresholds; alternating rounds).
Small images keep it to minutes on a 2-core CPU; what grows with the set is the COCO
matching and accumulation, which do not depend on the image size. Peak memory above the
start of each evaluation is reported for both sets, and its slope per 1 000 images.

``predict_rss_drift``: predict.py's loop (`run_predictions`, drawn images written) over a
folder of 5 000 images and a 2-minute video (30 fps, 128 px, written with
``cv2.VideoWriter``): peak RSS over the last 1 000 images ÷ over the first 1 000, minus 1.

The full YOLOv2 (Darknet-19 at 416, the config's loss, optimiser, precision and XLA
resolved as a run resolves them) train step at batch 16 and 32, images/s, alternated with
the config's training pipeline at 416 on real JPEGs with one loading thread and no image
cache (a COCO-sized set does not fit in memory): images/s per core, and the cores that
pipeline needs to feed an H100-class step of ``H100_IMAGES_PER_S`` (docs/gpu.md).
"""

import argparse
import dataclasses
import json
import os
import resource
import tempfile
import threading
import time

import numpy as np

from detector.bench.rounds import alternate, figure, load_or_say
from detector.config.schema import DEFAULT_CONFIG

# YOLOv2 at 416, batch 64, bf16 on one H100 SXM: 88 GFLOPs per image per step against
# ~990 TFLOP/s dense bf16 (NVIDIA's H100 datasheet) at 30-50 % of peak through cuDNN:
# 3 400-5 600 images/s; the middle is assumed (the budget on paper in docs/gpu.md).
H100_IMAGES_PER_S = 4000.0
H100_RANGE = (3400.0, 5600.0)
EVAL_SIZE = 128  # pixels: the generated images and the evaluation input


def per_image_growth(small_s: float, small_n: int, large_s: float, large_n: int) -> float:
    """Seconds per image on the large set ÷ on the small one (1 = linear)."""
    return (large_s / large_n) / (small_s / small_n)


def rss_drift(samples: list[float], window: int) -> float:
    """Peak of the last `window` RSS samples ÷ the peak of the first `window`, minus 1."""
    if len(samples) < 2 * window:
        raise ValueError(f"{len(samples)} samples: fewer than two windows of {window}")
    return max(samples[-window:]) / max(samples[:window]) - 1


def cores_needed(images_per_s: float, ms_per_image: float) -> float:
    """CPU cores a pipeline costing `ms_per_image` of CPU per image needs to deliver
    `images_per_s`."""
    return images_per_s * ms_per_image / 1000


def rss_mb() -> float:
    """This process's resident memory now, MB (Linux /proc; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """The peak resident memory above the start, MB, sampled every 10 ms in a thread
    while the ``with`` block runs (``.peak_above``)."""

    def __enter__(self):
        self.start, self.peak, self._done = rss_mb(), rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        self.peak_above = self.peak - self.start


def small_model(classes: int):
    """The default config's network (YOLOv2-tiny, width 0.5) at `EVAL_SIZE`, float32,
    untrained: at evaluation's 0.005 score threshold it fills ``max_detections``."""
    import keras

    from detector.model.network import build_inference_model

    keras.mixed_precision.set_global_policy("float32")
    anchors = [[1.0, 1.0], [2.0, 3.0], [4.0, 2.0], [5.0, 5.0], [8.0, 7.0]]
    return build_inference_model(classes, anchors, "tiny", 0.5, EVAL_SIZE)


def eval_growth(cfg, folder: str, sizes: tuple[int, int], rounds: int) -> dict:
    """``eval_growth`` and the memory per 1 000 images of both sets (see the module)."""
    from detector.bench.scale import write_tiny_coco
    from detector.data.coco import ground_truth
    from detector.data.spec import load_dataset
    from detector.engine.build import eval_kwargs
    from detector.evaluation.coco import EvalImages, evaluate_model
    from detector.inference.forward import make_predict_fn

    e, model = cfg.eval, small_model(80)
    how = eval_kwargs(e)
    how["predict_fn"] = make_predict_fn(model, e.score_threshold, e.nms_iou, e.max_detections)
    jobs = {}
    for n in sizes:
        root = os.path.join(folder, f"coco{n}")
        spec = write_tiny_coco(root, n, seed=n, size=EVAL_SIZE, classes=80, boxes=(1, 14))
        val = load_dataset(spec, "val")
        truth, images = ground_truth(val), EvalImages(val.records, e.cache_mb)

        def job(n=n, val=val, truth=truth, images=images) -> dict:
            start = time.perf_counter()
            with PeakRSS() as rss:
                evaluate_model(model, val, EVAL_SIZE, truth, images=images,
                               keep_results=False, **how)  # fmt: skip
            return {f"eval_{n}_s": time.perf_counter() - start, f"eval_{n}_mb": rss.peak_above}

        jobs[n] = job
    r = alternate(jobs, rounds)
    small, large = sizes
    keys = (f"eval_{small}_s", f"eval_{large}_s")
    out = figure("eval_growth", r, lambda a, b: per_image_growth(a, small, b, large), *keys)
    for n in sizes:
        out[f"eval_ms_per_image_{n}"] = 1000 * min(r[f"eval_{n}_s"]) / n
        out[f"eval_peak_mb_{n}"] = max(r[f"eval_{n}_mb"])  # above the evaluation's start
    grown = out[f"eval_peak_mb_{large}"] - out[f"eval_peak_mb_{small}"]
    out["eval_mb_per_1000_images"] = 1000 * grown / (large - small)
    return out


def predict_drift(folder: str, images: int, video_seconds: int, window: int) -> dict:
    """``predict_rss_drift`` on a folder of `images` images (the larger eval set's) and
    on a `video_seconds` video at 30 fps; the headline is the larger of the two."""
    from detector.inference.detector import Detector
    from detector.inference.outputs import Writers, run_predictions
    from detector.inference.sources import open_source

    detector = Detector(small_model(80))
    settings = {"conf": 0.25, "iou": 0.45, "max_det": 100, "agnostic": False,
                "classes": None, "input_size": None}  # fmt: skip
    sources = {
        "folder": os.path.join(folder, f"coco{images}", "images"),
        "video": write_video(os.path.join(folder, "video.mp4"), video_seconds, 30),
    }
    out = {}
    for name, path in sources.items():
        source, samples = open_source(path), []
        writers = Writers(os.path.join(folder, f"predict-{name}"), True, False, False,
                          fps=source.fps)  # fmt: skip
        log = samples.append  # one call per image, then the closing throughput line
        run_predictions(detector, source, writers, settings, 16, log=lambda _, s=log: s(rss_mb()))
        samples = samples[:-1]
        out[f"predict_rss_drift_{name}"] = rss_drift(samples, window)
        out[f"predict_{name}_frames"] = len(samples)
        out[f"predict_{name}_peak_mb"] = max(samples)
    out["predict_rss_drift"] = max(out["predict_rss_drift_folder"], out["predict_rss_drift_video"])
    return out


def write_video(path: str, seconds: int, fps: int) -> str:
    """A `seconds`-long `EVAL_SIZE`-px mp4 of a square crossing a grey frame."""
    import cv2

    size = EVAL_SIZE
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    for k in range(seconds * fps):
        frame = np.full((size, size, 3), 90, np.uint8)
        x = k % (size - 32)
        frame[40:72, x : x + 32] = (20, 180, 240)
        writer.write(frame)
    writer.release()
    return path


def synthetic_batch(batch: int, size: int, anchors: list, max_boxes: int) -> tuple:
    """A training batch ((images uint8, y_true, true_boxes), dummy) with one object per
    image (its cell and anchor marked), for timing the step alone."""
    grid, rng = size // 32, np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    y_true = np.zeros((batch, grid, grid, len(anchors), 6), np.float32)
    y_true[:, grid // 2, grid // 2, 0] = [0.5, 0.5, 0.2, 0.3, 1, 0]
    boxes = np.zeros((batch, max_boxes, 4), np.float32)
    boxes[:, 0] = [0.5, 0.5, 0.2, 0.3]
    return (images, y_true, boxes), np.zeros(batch, np.float32)


def full_model_figures(cfg, spec, records, size: int, batches: tuple, rounds: int) -> dict:
    """The full YOLOv2's step images/s at each of `batches` (the run's training model at
    `size`) alternated with the config's pipeline `spec` at `size` on `records`, one
    loading thread, no image cache: images/s per core and the cores an H100 needs."""
    import keras
    import tensorflow as tf

    from detector.bench.step import fit_job, iterate_job
    from detector.data.pipeline import make_train_dataset
    from detector.engine.build import make_training_model
    from detector.model.network import build_inference_model

    keras.mixed_precision.set_global_policy(cfg.train.precision)
    anchors = spec.anchors
    inference = build_inference_model(80, anchors, "darknet19", 1.0, size)
    model = make_training_model(cfg, inference, cfg.train.lr)
    jobs = {}
    for b in batches:
        data = tf.data.Dataset.from_tensors(synthetic_batch(b, size, anchors, spec.max_boxes))
        jobs[b] = fit_job(model, data.repeat(), 1, b, f"full_step_{b}_s")
    loader = dataclasses.replace(spec, records=records, input_size=size, multiscale=None,
                                 parallel_calls=1, cache_mb=0.0)  # fmt: skip
    jobs["pipeline"] = iterate_job(make_train_dataset(loader), 8, spec.batch_size, "pipe_s")
    r = alternate(jobs, rounds)
    out = {f"full_step_ips_batch_{b}": 1 / min(r[f"full_step_{b}_s"]) for b in batches}
    per_core = 1 / min(r["pipe_s_cpu"])
    out["pipeline_ips_per_core"] = per_core
    out["h100_images_per_s_assumed"] = H100_IMAGES_PER_S
    ms = 1000 / per_core
    out["cores_for_h100"] = cores_needed(H100_IMAGES_PER_S, ms)
    out["cores_for_h100_range"] = [cores_needed(rate, ms) for rate in H100_RANGE]
    return out


def measure(cfg, folder: str, quick: bool, jpegs: str | None) -> dict:
    """Every growth figure (sizes cut down with `quick`: a smoke run, not a measurement)."""
    from detector.bench.core import bench_train_input
    from detector.bench.pipeline import real_jpegs
    from detector.engine.run import read_splits

    sizes, video, window = ((40, 400), 8, 100) if quick else ((500, 5000), 120, 1000)
    rounds = 1 if quick else 2
    out = {"quick": quick, "eval_sizes": list(sizes), "eval_image_px": EVAL_SIZE}
    out.update(eval_growth(cfg, folder, sizes, rounds))
    out.update(predict_drift(folder, sizes[1], video, window))
    train, _ = read_splits(cfg.data.spec, cfg.data.max_pixels)
    cfg, _, spec = bench_train_input(cfg, train)
    records, out["jpegs"] = real_jpegs(jpegs, train.records)
    size, batches = (128, (2, 4)) if quick else (416, (16, 32))
    out["full_input_size"], out["precision"] = size, cfg.train.precision
    out.update(full_model_figures(cfg, spec, records, size, batches, rounds))
    return out


def format_growth(r: dict) -> str:
    """The growth figures, one line each."""
    lines = [
        f"eval_growth {r['eval_growth']:.3f} (spread {r['eval_growth_spread']:.3f}): per-image "
        f"evaluation cost at {r['eval_sizes'][1]} images / at {r['eval_sizes'][0]} "
        "(80 classes; target <= 1.2)",
        f"predict_rss_drift {r['predict_rss_drift']:.4f}: peak RSS of the last / first window, "
        f"-1 (folder {r['predict_rss_drift_folder']:.4f}, video "
        f"{r['predict_rss_drift_video']:.4f}; target <= 0.05)",
    ]
    shown = ("eval_ms", "eval_peak", "eval_mb", "full_step")
    for key in sorted(k for k in r if k.startswith(shown)):
        lines.append(f"{key} {r[key]:.3f}")
    lines.append(
        f"pipeline_ips_per_core {r['pipeline_ips_per_core']:.1f}: cores to feed "
        f"{r['h100_images_per_s_assumed']:.0f} images/s (H100, assumed): "
        f"{r['cores_for_h100']:.1f} ({r['cores_for_h100_range'][0]:.1f}-"
        f"{r['cores_for_h100_range'][1]:.1f} over 3400-5600 images/s)"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detector.bench growth", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--jpegs", help="dataset spec of real JPEGs for the pipeline figure")
    parser.add_argument("--dir", help="where the generated data goes (default: a temporary one)")
    args = parser.parse_args(argv)
    cfg = load_or_say(args.config, args.set)
    if cfg is None:
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as scratch:
        results = measure(cfg, args.dir or scratch, args.quick, args.jpegs)
    print(format_growth(results))
    if args.json:
        from detector.utils.atomic import atomic_write_text

        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_text(args.json, json.dumps(results, indent=2))
    return 0
