"""Dataset tools.

    python -m detector.data check SPEC [--json OUT] [--plots DIR] [--config FILE]
    python -m detector.data convert SPEC OUT_DIR --to coco|voc|yolo [--split train]
    python -m detector.data pack SPEC OUT_DIR [--shards 8]
    python -m detector.data anchors SPEC [--k 5] [--input-size 416] [--letterbox] [--json OUT]
    python -m detector.data synthesize OUT_DIR [--seed 0] [--train 1000] [--val 200] [--size 256]

`check` reads every split the way training does (every image opened once) and reports
images, boxes, boxes per class, negatives, ignore regions and problems by reason; with
`--plots` it draws the class histogram, the box shapes with the k-means anchors, and a
grid of augmented training samples with their boxes. `convert` writes a split's
annotations in another format (the images stay where they are). `pack` writes every
split as sharded TFRecord files with a spec for them (`detector.data.tfrecord`), so that
a large dataset starts training in seconds. `anchors` prints k-means anchors (distance
1 - IoU, `detector.model.anchors`) of a split's boxes in grid cells and their mean best IoU.
`synthesize` writes the seeded synthetic dataset (`detector.data.synthetic`).
"""

import argparse
import os
import sys
import time
from collections import Counter

import numpy as np
import yaml

from detector.config.schema import load_config
from detector.data.convert import write_coco, write_voc, write_yolo
from detector.data.plots import plot_augmented, plot_box_shapes, plot_class_histogram
from detector.data.records import Dataset
from detector.data.spec import SPLITS, load_dataset, load_spec, overlap_warning, split_overlap
from detector.data.synthetic import make_synthetic
from detector.data.tfrecord import pack_split
from detector.engine.build import make_augmenter
from detector.model.anchors import box_shapes, kmeans_anchors, mean_best_iou
from detector.model.grid import STRIDE
from detector.utils.atomic import atomic_write_json, atomic_write_text, describe_os_error


def summarize(dataset: Dataset) -> dict:
    """Counts of one split; `boxes` are the kept non-ignore boxes."""
    per_class = Counter(int(c) for r in dataset.records for c in r.classes)
    return {
        "images": len(dataset.records),
        "boxes": int(sum(per_class.values())),
        "per_class": {name: per_class.get(i, 0) for i, name in enumerate(dataset.names)},
        "negatives": sum(len(r.boxes) == 0 for r in dataset.records),
        "ignore_regions": int(sum(len(r.ignore) for r in dataset.records)),
        "problems": dict(sorted(dataset.problems.items())),
        "examples": {k: list(v) for k, v in sorted(dataset.problems.examples.items())},
    }


def format_summary(split: str, summary: dict) -> str:
    lines = [
        f"[{split}] {summary['images']} images, {summary['boxes']} boxes, "
        f"{summary['negatives']} without objects, {summary['ignore_regions']} ignore regions"
    ]
    width = max(len(n) for n in summary["per_class"]) if summary["per_class"] else 0
    for name, count in summary["per_class"].items():
        lines.append(f"  {name:<{width}} {count:>7}")
    return "\n".join(lines)


def check(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    splits = [s for s in SPLITS if s in spec]
    report, datasets = {"spec": spec["path"], "format": spec["format"], "splits": {}}, {}
    for split in splits:
        dataset = load_dataset(args.spec, split)
        datasets[split] = dataset
        summary = summarize(dataset)
        report["splits"][split] = summary
        print(format_summary(split, summary))
        print(dataset.problems.report(f"  {split}"))
    report["names"] = datasets[splits[0]].names
    report["overlap"] = {}
    for other in ("val", "test"):
        if "train" in datasets and other in datasets:
            shared = split_overlap(datasets["train"], datasets[other])
            report["overlap"][f"train/{other}"] = shared
            if shared:
                print(overlap_warning("train", other, shared))
    if args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.plots:
        cfg = load_config(args.config) if args.config else load_config()
        os.makedirs(args.plots, exist_ok=True)
        train = datasets.get("train") or datasets[splits[0]]
        written = [
            plot_class_histogram(datasets, os.path.join(args.plots, "classes.png")),
            plot_box_shapes(train, cfg, os.path.join(args.plots, "box_shapes.png")),
            plot_augmented(
                train, cfg, make_augmenter(cfg.data), os.path.join(args.plots, "augmented.png")
            ),
        ]
        print("wrote " + ", ".join(written))
    return 0


def convert(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    dataset = load_dataset(args.spec, args.split)
    images = spec[args.split]["images"]
    out = os.path.abspath(args.out_dir)
    if args.to == "coco":
        write_coco(dataset, images, os.path.join(out, f"{args.split}.json"))
        paths = {"images": images, "annotations": os.path.join(out, f"{args.split}.json")}
    elif args.to == "voc":
        write_voc(dataset, images, os.path.join(out, args.split))
        paths = {"images": images, "annotations": os.path.join(out, args.split)}
    else:
        write_yolo(dataset, images, os.path.join(out, args.split))
        paths = {"images": images, "labels": os.path.join(out, args.split)}
    print(f"wrote {len(dataset.records)} images' annotations as {args.to} under {out}")
    print("dataset spec for them:")
    new_spec = {"format": args.to, "names": dataset.names, args.split: paths}
    print(yaml.safe_dump(new_spec, sort_keys=False))
    return 0


def pack(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    packed = {"format": "tfrecord"}
    for split in [s for s in SPLITS if s in spec]:
        start = time.monotonic()
        dataset = load_dataset(args.spec, split)
        print(dataset.problems.report(f"{split} ({len(dataset.records)} images)"))
        index = pack_split(dataset, out, split, args.shards)
        shards, seconds = len(index["files"]), time.monotonic() - start
        print(f"{split}: {index['count']} images in {shards} shard(s), {seconds:.1f} s")
        packed[split] = {"packed": "."}
    spec_path = os.path.join(out, "spec.yaml")
    atomic_write_text(spec_path, yaml.safe_dump(packed, sort_keys=False))
    print(f"packed dataset spec: {spec_path}  (train with --data {spec_path})")
    return 0


def anchors(args: argparse.Namespace) -> int:
    if args.input_size <= 0 or args.input_size % STRIDE:
        raise ValueError(f"--input-size: {args.input_size} is not a positive multiple of 32")
    for flag, value in (("--k", args.k), ("--restarts", args.restarts)):
        if value < 1:
            raise ValueError(f"{flag}: expected an integer >= 1, got {value}")
    dataset = load_dataset(args.spec, args.split, check_images=False)
    wh = box_shapes(dataset.records, args.input_size, args.letterbox)
    centres = kmeans_anchors(wh, args.k, args.seed, restarts=args.restarts)
    iou = mean_best_iou(wh, centres)
    grid = args.input_size // STRIDE
    print(f"{len(wh)} boxes, k={args.k}, input {args.input_size} px ({grid}x{grid} grid)")
    print("anchors (grid cells): " + ",  ".join(f"{w:.4g},{h:.4g}" for w, h in centres))
    print(f"mean IoU with the best anchor: {iou:.4f}")
    if args.json:
        rounded = np.round(centres.astype(float), 5).tolist()
        atomic_write_json(
            args.json, {"anchors": rounded, "mean_iou": iou, "input_size": args.input_size}
        )
    return 0


def synthesize(args: argparse.Namespace) -> int:
    make_synthetic(args.out_dir, args.seed, args.train, args.val, args.size)
    print(f"wrote {args.train} train + {args.val} val images to {args.out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `python -m detector.data` parser; each subcommand sets `run`."""
    parser = argparse.ArgumentParser(prog="python -m detector.data", description="Dataset tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="count images, boxes, classes and problems; plots")
    p.add_argument("spec", help="dataset spec YAML")
    p.add_argument("--json", help="write the counts here")
    p.add_argument("--plots", help="write PNG plots into this folder")
    p.add_argument(
        "--config",
        help="experiment YAML whose input size, anchors and augmentation the plots use "
        "(default: the built-in defaults, 416 px)",
    )
    p.set_defaults(run=check)
    p = sub.add_parser("convert", help="write a split's annotations in another format")
    p.add_argument("spec")
    p.add_argument("out_dir")
    p.add_argument("--to", required=True, choices=("coco", "voc", "yolo"))
    p.add_argument("--split", default="train", choices=SPLITS)
    p.set_defaults(run=convert)
    p = sub.add_parser("pack", help="write the splits as sharded TFRecord files (large data)")
    p.add_argument("spec")
    p.add_argument("out_dir")
    p.add_argument(
        "--shards",
        type=int,
        default=8,
        help="files per split (default 8; use at least the number of workers)",
    )
    p.set_defaults(run=pack)
    p = sub.add_parser("anchors", help="k-means anchors (distance 1 - IoU) of a split's boxes")
    p.add_argument("spec", help="dataset spec YAML")
    p.add_argument("--k", type=int, default=5, help="number of anchors (default 5)")
    p.add_argument("--input-size", type=int, default=416, help="network input, px")
    p.add_argument("--letterbox", action="store_true", help="boxes as letterboxed")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--restarts", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write {anchors, mean_iou, input_size} here")
    p.set_defaults(run=anchors)
    p = sub.add_parser("synthesize", help="write the seeded synthetic dataset (COCO layout)")
    p.add_argument("out_dir", help="dataset root (images/ and annotations/ go here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=1000, help="training images")
    p.add_argument("--val", type=int, default=200, help="validation images")
    p.add_argument("--size", type=int, default=256, help="image side, pixels")
    p.set_defaults(run=synthesize)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one dataset command; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write the system refuses (read-only, disk full, a file)
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
