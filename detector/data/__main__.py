"""Dataset tools.

    python -m detector.data check SPEC [--json OUT] [--plots DIR] [--config FILE]
    python -m detector.data convert SPEC OUT_DIR --to coco|voc|yolo [--split train]
    python -m detector.data pack SPEC OUT_DIR [--shards 8]

`check` reads every split the way training does (every image opened once) and reports
images, boxes, boxes per class, negatives, ignore regions and problems by reason; with
`--plots` it draws the class histogram, the box shapes with the k-means anchors, and a
grid of augmented training samples with their boxes. `convert` writes a split's
annotations in another format (the images stay where they are). `pack` writes every
split as sharded TFRecord files with a spec for them (`detector.data.tfrecord`), so that
a large dataset starts training in seconds.
"""

import argparse
import json
import os
import sys
from collections import Counter

import numpy as np

from detector.data.records import Dataset
from detector.data.spec import SPLITS, load_dataset, load_spec


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
    if args.json:
        from detector.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.plots:
        from detector.config import load_config
        from detector.data.plots import plot_augmented, plot_box_shapes, plot_class_histogram

        cfg = load_config(args.config) if args.config else load_config()
        os.makedirs(args.plots, exist_ok=True)
        written = [
            plot_class_histogram(datasets, os.path.join(args.plots, "classes.png")),
            plot_box_shapes(datasets.get("train") or datasets[splits[0]], cfg,
                            os.path.join(args.plots, "box_shapes.png")),  # fmt: skip
            plot_augmented(datasets.get("train") or datasets[splits[0]], cfg,
                           os.path.join(args.plots, "augmented.png")),  # fmt: skip
        ]
        print("wrote " + ", ".join(written))
    return 0


def convert(args: argparse.Namespace) -> int:
    from detector.data.export import write_coco, write_voc, write_yolo

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
    import yaml

    print(yaml.safe_dump({"format": args.to, "names": dataset.names, args.split: paths},
                         sort_keys=False))  # fmt: skip
    return 0


def pack(args: argparse.Namespace) -> int:
    import time

    import yaml

    from detector.data.tfrecord import pack_split
    from detector.io import atomic_write_text

    spec = load_spec(args.spec)
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    packed = {"format": "tfrecord"}
    for split in [s for s in SPLITS if s in spec]:
        start = time.monotonic()
        dataset = load_dataset(args.spec, split)
        print(dataset.problems.report(f"{split} ({len(dataset.records)} images)"))
        index = pack_split(dataset, out, split, args.shards)
        print(f"{split}: {index['count']} images in {len(index['files'])} shard(s), "
              f"{time.monotonic() - start:.1f} s")  # fmt: skip
        packed[split] = {"packed": "."}
    spec_path = os.path.join(out, "spec.yaml")
    atomic_write_text(spec_path, yaml.safe_dump(packed, sort_keys=False))
    print(f"packed dataset spec: {spec_path}  (train with --data {spec_path})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detector.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="count images, boxes, classes and problems; plots")
    p.add_argument("spec", help="dataset spec YAML")
    p.add_argument("--json", help="write the counts here")
    p.add_argument("--plots", help="write PNG plots into this folder")
    p.add_argument("--config", help="experiment YAML whose input size, anchors and "
                   "augmentation the plots use (default: the built-in defaults, 416 px)")  # fmt: skip
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
    p.add_argument("--shards", type=int, default=8,
                   help="files per split (default 8; use at least the number of workers)")  # fmt: skip
    p.set_defaults(run=pack)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
