"""Scale-out measurements, side by side in one run (docs/distributed.md reports them).

    python -m detector.bench scale mirrored [--config FILE] [--steps 20] [--json OUT]
    python -m detector.bench scale startup [--images 100000] [--dir DIR] [--json OUT]

``mirrored``: seconds per training step of the same model and the same global batch on
one device and under ``MirroredStrategy`` over the CPU split into 2 logical devices,
measured in alternation in one process; the ratio is the strategy's per-step overhead
(on one CPU the two "devices" share the same cores, so no speed-up is possible here: the
number isolates the cost of splitting, replicating and all-reducing).

``startup``: generates a COCO spec of N tiny images (32 px, 1-3 boxes each), packs it
into TFRecords, then times, each in a fresh process, what a training start does before
its first step: read the train split (JSON: parse, build records, open every image;
packed: read the index), k-means anchors, build the input pipeline, get the first batch.
The page cache is warm for both (the files were just written): the JSON numbers are a
lower bound of a cold start.
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import time

import numpy as np

from detector.config.schema import DEFAULT_CONFIG


def mirrored_overhead(cfg, steps: int = 20, rounds: int = 3) -> dict:
    """Seconds per step on one device vs mirrored on 2 logical CPU devices (same global
    batch, same model), interleaved; call in a process where TensorFlow has not started."""
    from detector.engine.distribute import split_cpu

    split_cpu(2)
    import keras
    import tensorflow as tf

    from detector.bench.rounds import alternate, figure
    from detector.bench.step import fit_job
    from detector.engine.build import make_training_model
    from detector.engine.devices import resolve_precision
    from detector.model.network import build_inference_model

    precision = resolve_precision(cfg.train.precision)[0]
    cfg = copy.deepcopy(cfg)  # the resolved precision, for every model built here
    cfg.train.precision = precision
    keras.mixed_precision.set_global_policy(precision)
    size, batch, classes = cfg.model.input_size, cfg.data.batch_size, 4
    anchors = [[1.0, 1.0], [2.0, 3.0], [4.0, 2.0], [5.0, 5.0], [8.0, 7.0]]
    grid = size // 32
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y_true = np.zeros((batch, grid, grid, len(anchors), 6), np.float32)
    y_true[:, 1, 1, 0] = [0.2, 0.2, 0.1, 0.1, 1, 1]
    boxes = np.zeros((batch, cfg.data.max_boxes, 4), np.float32)
    boxes[:, 0] = [0.2, 0.2, 0.1, 0.1]
    data = ((images, y_true, boxes), np.zeros(batch, np.float32))

    def model_under(strategy):
        with strategy.scope():
            m = cfg.model
            inference = build_inference_model(classes, anchors, m.variant, m.width, size)
            return make_training_model(cfg, inference, cfg.train.lr)

    one = model_under(tf.distribute.get_strategy())
    two = model_under(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    ds = tf.data.Dataset.from_tensors(data).repeat()
    jobs = {
        "one": fit_job(one, ds, steps, batch, "one"),
        "two": fit_job(two, ds, steps, batch, "two"),
    }
    r = alternate(jobs, rounds)
    ratio = figure("mirrored_overhead_ratio", r, lambda a, b: b / a, "one", "two")
    return {
        "config": {
            "variant": cfg.model.variant,
            "width": cfg.model.width,
            "input_size": size,
            "global_batch": batch,
            "precision": precision,
        },
        "step_seconds_one_device": batch * min(r["one"]),
        "step_seconds_mirrored_2": batch * min(r["two"]),
        **ratio,
    }


def write_tiny_coco(
    root: str, count: int, seed: int = 0, size: int = 32, classes: int = 4, boxes=(1, 3)
) -> str:
    """`count` identical `size`-px JPEGs with boxes[0]..boxes[1] random boxes each of
    `classes` categories, as a COCO spec (train = val); returns the spec's path."""
    import cv2

    rng = np.random.default_rng(seed)
    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir, exist_ok=True)
    base = np.full((size, size, 3), 40, np.uint8)
    ok, jpeg = cv2.imencode(".jpg", base)
    images, annotations = [], []
    for i in range(count):
        name = f"{i:07d}.jpg"
        path = os.path.join(images_dir, name)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(jpeg.tobytes())
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for _ in range(int(rng.integers(boxes[0], boxes[1] + 1))):
            w, h = rng.uniform(size / 8, size * 3 / 8, 2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(rng.integers(1, classes + 1)),
                    "iscrowd": 0,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in range(1, classes + 1)],
    }
    with open(os.path.join(root, "instances.json"), "w") as f:
        json.dump(coco, f)
    spec = os.path.join(root, "spec.yaml")
    with open(spec, "w") as f:
        f.write(
            "format: coco\n"
            "train: {images: images, annotations: instances.json}\n"
            "val: {images: images, annotations: instances.json}\n"
        )
    return spec


STARTUP_SNIPPET = """
import json, sys, time
import tensorflow as tf
from detector.model.anchors import box_shapes, kmeans_anchors
from detector.data.pipeline import TrainInput, make_train_dataset
from detector.data.spec import load_dataset
start = time.perf_counter()
train = load_dataset(sys.argv[1], "train")
read = time.perf_counter()
anchors = kmeans_anchors(box_shapes(train.records, 64), 5, seed=0)
clustered = time.perf_counter()
ds = make_train_dataset(TrainInput(train.records, 64, anchors, 16, 10, None, seed=0))
next(iter(ds))
done = time.perf_counter()
print(json.dumps({"read_seconds": read - start, "anchors_seconds": clustered - read,
                  "first_batch_seconds": done - start}))
"""


def startup(count: int, folder: str) -> dict:
    """Start-up seconds of a `count`-image spec from JSON and from its TFRecord pack."""
    from detector.cli.data import main as data_main

    t0 = time.perf_counter()
    spec = write_tiny_coco(folder, count)
    made = time.perf_counter()
    packed = os.path.join(folder, "packed")
    if not os.path.isfile(os.path.join(packed, "spec.yaml")):
        data_main(["pack", spec, packed, "--shards", "16"])
    pack_seconds = time.perf_counter() - made

    def timed(path):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(
            [sys.executable, "-c", STARTUP_SNIPPET, path],
            check=True,
            capture_output=True,
            text=True,
            cwd=root,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    from_json = timed(spec)
    from_tfrecord = timed(os.path.join(packed, "spec.yaml"))
    return {
        "images": count,
        "generate_seconds": made - t0,
        "pack_seconds": pack_seconds,
        "json": from_json,
        "tfrecord": from_tfrecord,
        "startup_ratio_json_over_tfrecord": from_json["first_batch_seconds"]
        / from_tfrecord["first_batch_seconds"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detector.bench scale", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mirrored", help="per-step overhead of MirroredStrategy, 2 CPU devices")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json")
    p = sub.add_parser("startup", help="start-up time of a large spec: JSON vs TFRecord")
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument(
        "--dir",
        default="runs/bench_startup",
        help="where the generated dataset goes (kept for reruns)",
    )
    p.add_argument("--json")
    args = parser.parse_args(argv)
    if args.command == "mirrored":
        from detector.config.schema import load_config

        result = mirrored_overhead(load_config(args.config, args.set), args.steps)
        print(
            f"step seconds: one device {result['step_seconds_one_device']:.4f}, mirrored "
            f"over 2 CPU devices {result['step_seconds_mirrored_2']:.4f}; ratio "
            f"{result['mirrored_overhead_ratio']:.3f}"
        )
    else:
        result = startup(args.images, args.dir)
        for source in ("json", "tfrecord"):
            r = result[source]
            print(
                f"{source:>8}: read split {r['read_seconds']:.2f} s, k-means anchors "
                f"{r['anchors_seconds']:.2f} s, first batch {r['first_batch_seconds']:.2f} s "
                "after start"
            )
        ratio = result["startup_ratio_json_over_tfrecord"]
        print(
            f"{args.images} images; JSON / TFRecord start-up: {ratio:.1f}x (generate "
            f"{result['generate_seconds']:.0f} s, pack {result['pack_seconds']:.0f} s)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
