"""``python -m detector.export CHECKPOINT --format saved_model|tflite|onnx [...]`` and
``python -m detector.export benchmark CHECKPOINT --data SPEC [--formats ...]``."""

import argparse
import sys


def export_parser() -> argparse.ArgumentParser:
    from detector.cli.train import Parser  # bad arguments: one error line, exit 2

    p = Parser(
        prog="python -m detector.export",
        description="Export a checkpoint with decoding and NMS inside (see also: "
        "python -m detector.export benchmark -h).",
    )
    p.add_argument("checkpoint", help="a .keras checkpoint (e.g. runs/x/best.keras)")
    p.add_argument("--format", required=True, choices=("saved_model", "tflite", "onnx"))
    p.add_argument(
        "--nms",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decoding and NMS inside (default); --no-nms exports the raw grid",
    )
    p.add_argument("--half", action="store_true", help="TFLite with float16 weights")
    p.add_argument("--int8", action="store_true", help="TFLite full-integer (needs --data)")
    p.add_argument("--data", help="dataset spec whose train split calibrates --int8")
    p.add_argument("--input-size", type=int, help="default: the checkpoint's input size")
    p.add_argument("--out", help="artifact path (default: beside the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--conf", type=float, default=0.005, help="NMS score threshold")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=100, help="detections per image")
    return p


def benchmark_parser() -> argparse.ArgumentParser:
    from detector.cli.train import Parser
    from detector.export.benchmark import VARIANTS

    p = Parser(
        prog="python -m detector.export benchmark",
        description="Export a checkpoint in several formats; print size, COCO AP and "
        "batch-1 latency of each in one table.",
    )
    p.add_argument("checkpoint", help="a .keras checkpoint")
    p.add_argument("--data", required=True, help="dataset spec (split scored, train calibrates)")
    p.add_argument("--split", default="val")
    p.add_argument(
        "--formats",
        nargs="+",
        choices=list(VARIANTS),
        help="default: all (onnx when the export extra is installed)",
    )
    p.add_argument("--repeats", type=int, default=20, help="timed runs per format (median)")
    p.add_argument("--work-dir", help="keep the exports here (default: a temporary folder)")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["benchmark"]:
            return run_benchmark(benchmark_parser().parse_args(argv[1:]))
        return run_export(export_parser().parse_args(argv))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path the system refuses
        from detector.utils.atomic import describe_os_error

        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 2


def run_export(args: argparse.Namespace) -> int:
    from detector.export import export

    path = export(
        args.checkpoint,
        args.format,
        out=args.out,
        nms=args.nms,
        half=args.half,
        int8=args.int8,
        data=args.data,
        input_size=args.input_size,
        score_threshold=args.conf,
        iou_threshold=args.iou,
        max_detections=args.max_det,
        force=args.force,
    )
    print(f"exported {path}")
    return 0


def run_benchmark(args: argparse.Namespace) -> int:
    from detector.export.benchmark import benchmark, format_table

    formats = tuple(args.formats) if args.formats else None
    rows = benchmark(args.checkpoint, args.data, formats, args.split, args.repeats, args.work_dir)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
