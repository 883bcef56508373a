"""Darknet interoperability commands.

    python -m detector.darknet convert CFG WEIGHTS OUT.keras [--names FILE] [--input-size N]
    python -m detector.darknet export CHECKPOINT OUT.weights [--cfg CFG]
    python -m detector.darknet layers CFG [--input-size N]

`convert` builds the cfg's network, loads the darknet weights and saves a checkpoint that
evaluate.py and training accept (class names from --names, one per line; category ids
1..C). `export` writes a checkpoint's convs back as darknet weights (header 0.2.0).
`layers` prints darknet's layer table with output sizes and BFLOPs. An error about a
cfg and the file that goes with it (convert's WEIGHTS, export's CHECKPOINT) names both.
"""

import argparse
import os
import sys

from detector.darknet.cfg import format_table, layer_table, read_cfg
from detector.darknet.pair import naming_both
from detector.darknet.weights import read_header
from detector.utils.atomic import atomic_save

# The modules that import Keras (hence TensorFlow) are imported inside the commands that
# use them, so that `layers` answers in a fraction of a second.


def read_names(path: str) -> list[str]:
    """Class names, one per line (darknet's .names files); blank lines are skipped."""
    if not os.path.isfile(path):
        raise ValueError(f"--names: file not found: {path}")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def convert(args: argparse.Namespace) -> int:
    from detector.darknet.build import build_from_cfg
    from detector.darknet.transfer import load_darknet_weights

    if not args.out.endswith(".keras"):
        raise ValueError(f"OUT must end in .keras, got {args.out}")
    names = read_names(args.names) if args.names else None
    with naming_both(cfg=args.cfg, weights=args.weights):
        model = build_from_cfg(args.cfg, args.input_size, names, letterbox=not args.plain_resize)
        count = load_darknet_weights(model, args.weights)
        with open(args.weights, "rb") as f:
            header = read_header(f.read(20), os.path.basename(args.weights))
    atomic_save(args.out, model.save, suffix=".keras")
    head = model.get_layer("yolo_head")
    print(
        f"loaded {count} conv layers from {args.weights} (darknet {header.major}."
        f"{header.minor}.{header.revision}, seen {header.seen}); {len(head.class_names)} "
        f"classes, {len(head.anchors)} anchors, input {head.input_size}; wrote {args.out}"
    )
    return 0


def export(args: argparse.Namespace) -> int:
    from detector.darknet.export import export_weights

    if not os.path.isfile(args.checkpoint):
        raise ValueError(f"checkpoint not found: {args.checkpoint}")
    count = export_weights(args.checkpoint, args.out, args.cfg)
    print(f"wrote {count} conv layers to {args.out} (darknet 0.2.0 layout)")
    return 0


def layers(args: argparse.Namespace) -> int:
    print(format_table(layer_table(read_cfg(args.cfg), args.input_size)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detector.darknet", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="darknet cfg + weights -> .keras checkpoint")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("out", help="the .keras checkpoint to write")
    p.add_argument("--names", help="class names, one per line (e.g. coco.names)")
    p.add_argument("--input-size", type=int, help="input side recorded (default: [net] width)")
    p.add_argument(
        "--plain-resize",
        action="store_true",
        help="record plain resizing instead of darknet's letterbox",
    )
    p.set_defaults(run=convert)
    p = sub.add_parser("export", help=".keras checkpoint -> darknet .weights")
    p.add_argument("checkpoint")
    p.add_argument("out", help="the .weights file to write")
    p.add_argument("--cfg", help="check the model's convs against this cfg first")
    p.set_defaults(run=export)
    p = sub.add_parser("layers", help="darknet's layer table with BFLOPs")
    p.add_argument("cfg")
    p.add_argument("--input-size", type=int, help="square input side (default: [net] size)")
    p.set_defaults(run=layers)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
