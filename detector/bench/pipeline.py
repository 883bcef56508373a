"""The input pipeline's CPU cost, for `detector.bench.core`: on the config's data alone (images/s
and CPU time per image, beside the train step's CPU time per image: on a machine without
an accelerator both share the cores, which bounds ``pipeline_ratio``); and on real JPEGs:
``pipeline_ms_per_image`` (CPU time per training example), the plain JPEG decode of the
same files (the floor) and the throughput with one and with two parallel calls
(``pipeline_scaling``); with ``data.albumentations`` set, the stage's own cost per image
(`albumentations_cost`)."""

import math
import os
import time

import numpy as np

# real JPEGs of varied sizes for the input pipeline's figures (else the config's train split)
COCO128 = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "coco128",
    "dataset.yaml",
)  # fmt: skip


def pipeline_alone(pipeline, batch: int, batches: int) -> dict:
    """The training `pipeline` alone in its steady state, `batches` batches of `batch`:
    images/s and process CPU milliseconds per image (every thread of the process)."""
    it = iter(pipeline)
    next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    wall, cpu, images = time.perf_counter() - wall, time.process_time() - cpu, batches * batch
    return {"pipeline_ips": images / wall, "pipeline_cpu_ms": 1000 * cpu / images}


def pipeline_cpu_timings(cfg, fallback, quick: bool) -> dict:
    """The training pipeline on real JPEGs (coco128 at 416 px when present, else
    `fallback` records at the config's size): CPU time per image with one parallel call,
    the plain decode of the same files, throughput with one and two parallel calls."""
    import cv2

    from detector.data.pipeline import TrainInput, make_train_dataset
    from detector.data.spec import load_dataset
    from detector.engine.build import make_augmenter

    records, size = fallback, cfg.model.input_size
    if os.path.exists(COCO128):
        records, size = load_dataset(COCO128, "train").records, 416
    anchors = [[1.0, 1.0], [3.0, 3.0], [6.0, 6.0], [9.0, 9.0], [12.0, 12.0]]
    # enough batches that the prefetch buffer (a batch or two) is a small part of them
    batch, batches = 8, 16 if quick else 48
    out = {}
    for calls in (1, 2):
        spec = TrainInput(
            records, size, anchors, batch, cfg.data.max_boxes,
            lambda: make_augmenter(cfg.data), parallel_calls=calls,
        )  # fmt: skip
        it = iter(make_train_dataset(spec))
        next(it)  # start-up; the batches prefetched while timing are counted (conservative)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(it)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out[f"pipeline_ips_{calls}_call" + ("s" if calls > 1 else "")] = batch * batches / wall
        if calls == 1:
            out["pipeline_ms_per_image"] = 1000 * cpu / (batch * batches)
        del it
    data = []
    for record in list(records)[: batch * batches]:
        with open(record.path, "rb") as f:
            data.append(np.frombuffer(f.read(), np.uint8))
    cpu = time.process_time()
    for d in data:  # cv2's threads are 1 here: the pipeline set them
        cv2.imdecode(d, cv2.IMREAD_COLOR)
    out["decode_ms_per_image"] = 1000 * (time.process_time() - cpu) / len(data)
    out.update(albumentations_cost(cfg, records, size, quick))
    return out


def albumentations_cost(cfg, records, size: int, quick: bool) -> dict:
    """The ``data.albumentations`` stage's CPU cost per image, {} when none is configured:
    the loading threads' work for one example (`ExampleMaker.make`: warp, the config's
    mosaic / mixup, colour, then the stage) with the configured stage and without it,
    timed side by side in alternating rounds over the same examples, the fastest round of
    each. Decoded images are cached after the first round, so the difference is the stage.

    Timed in the calling thread rather than through two tf.data pipelines: the idle one's
    prefetching ran during the other's rounds and corrupted both figures.
    """
    import dataclasses

    from detector.data.mosaic import ExampleMaker
    from detector.engine.build import make_augmenter

    d = cfg.data
    if not d.albumentations:
        return {}
    count, rounds = (16, 3) if quick else (64, 7)
    makers = {}
    for name, data in (("with", d), ("without", dataclasses.replace(d, albumentations=[]))):
        augmenter = make_augmenter(data)
        work = math.ceil(size * augmenter.max_zoom)
        makers[name] = ExampleMaker(
            records, augmenter, d.letterbox, work, d.mosaic, d.mixup, cache=True
        )
    best = dict.fromkeys(makers, math.inf)
    for _ in range(rounds):
        for name, maker in makers.items():
            cpu = time.process_time()
            for k in range(count):
                maker.make(k % len(records), size, np.random.default_rng([cfg.train.seed, k]))
            best[name] = min(best[name], 1000 * (time.process_time() - cpu) / count)
    return {
        "example_ms_albumentations": best["with"],
        "example_ms_no_albumentations": best["without"],
        "albumentations_ms_per_image": best["with"] - best["without"],
    }
