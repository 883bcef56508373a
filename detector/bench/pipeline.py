"""The input pipeline's CPU cost on real JPEGs, for `detector.bench.core`: the training
pipeline the config builds (its `TrainInput`, with the real images' records and the
number of loading threads swapped in) against the plain JPEG decode of the same files
(``pipeline_vs_decode``, CPU time per training example ÷ per decoded file) and with two
parallel calls against one (``pipeline_scaling``), all three in alternating rounds; with
``data.albumentations`` set, the stage's own cost per image (`albumentations_cost`)."""

import dataclasses
import math
import os
import time

import numpy as np

from detector.bench.rounds import alternate, figure
from detector.bench.step import iterate_job

# real JPEGs of varied sizes, when the shared data sits beside the repository (else the
# config's train split; --jpegs names another spec)
COCO128 = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data",
    "coco128", "dataset.yaml",
)  # fmt: skip


def real_jpegs(spec: str | None, fallback):
    """(the records of `spec`'s train split, its name), or of COCO128 when it exists, or
    (`fallback`, "the config's train split")."""
    from detector.data.spec import load_dataset

    path = spec or (COCO128 if os.path.exists(COCO128) else None)
    if path is None:
        return fallback, "the config's train split"
    return load_dataset(path, "train").records, os.path.basename(os.path.dirname(path))


def pipeline_cpu_figures(spec, records, quick: bool, rounds: int) -> dict:
    """``pipeline_vs_decode`` and ``pipeline_scaling`` (with their sides): the config's
    training pipeline `spec` on `records` with one and with two loading threads, and
    ``cv2.imdecode`` of the files of its first examples, alternated. The decoded-image
    cache (``data.cache_mb``) is as configured: filled in the warm-up round when the
    images fit, as in a run after its first epoch."""
    import cv2

    from detector.data.pipeline import make_train_dataset

    batch, batches = spec.batch_size, 8 if quick else 24
    one, two = (
        make_train_dataset(dataclasses.replace(spec, records=records, parallel_calls=calls))
        for calls in (1, 2)
    )
    files = []
    for record in list(records)[: batch * batches]:
        with open(record.path, "rb") as f:
            files.append(np.frombuffer(f.read(), np.uint8))

    def decode() -> dict:
        cpu = time.process_time()
        for data in files:  # cv2's threads are 1 here: the pipeline set them
            cv2.imdecode(data, cv2.IMREAD_COLOR)
        return {"decode_cpu_s": (time.process_time() - cpu) / len(files)}

    jobs = {
        "one": iterate_job(one, batches, batch, "pipeline_1_s"),
        "decode": decode,
        "two": iterate_job(two, batches, batch, "pipeline_2_s"),
    }
    r = alternate(jobs, rounds)
    out = {
        "pipeline_ms_per_image": 1000 * min(r["pipeline_1_s_cpu"]),
        "decode_ms_per_image": 1000 * min(r["decode_cpu_s"]),
        "pipeline_ips_1_call": 1 / min(r["pipeline_1_s"]),
        "pipeline_ips_2_calls": 1 / min(r["pipeline_2_s"]),
    }
    ratio = lambda a, b: a / b  # noqa: E731
    out.update(figure("pipeline_vs_decode", r, ratio, "pipeline_1_s_cpu", "decode_cpu_s"))
    out.update(figure("pipeline_scaling", r, ratio, "pipeline_1_s", "pipeline_2_s"))
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
