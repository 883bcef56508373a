"""The command lines ``train.py`` and ``evaluate.py`` (``predict.py``'s is
`detector.cli.predict`): argument parsing and one call into the library each. Bad input is
one ``error: ...`` line on stderr, exit 2."""

import argparse
import sys

from detector.config.schema import DEFAULT_CONFIG


class Parser(argparse.ArgumentParser):
    """argparse reporting bad arguments on one line (``error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} -h)\n")


def train_parser() -> argparse.ArgumentParser:
    p = Parser(description="Train a YOLOv2 detector.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiment YAML")
    p.add_argument("--data", help="dataset spec YAML (sets data.spec)")
    p.add_argument("--epochs", type=int, help="sets train.epochs")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget (sets train.max_minutes)")
    p.add_argument("--run-dir", help="sets train.run_dir")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue this run from its saved state (its config.yaml; --epochs "
        "extends it, --max-minutes replaces the budget)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr=0.001 (repeatable)",
    )
    return p


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The flags as ``section.key=value`` overrides; ``--set`` ones come last and win."""
    flags = {
        "data.spec": args.data,
        "train.epochs": args.epochs,
        "train.max_minutes": args.max_minutes,
        "train.run_dir": args.run_dir,
    }
    return [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.set)


def train_main(argv=None) -> int:
    parser = train_parser()
    args = parser.parse_args(argv)
    if args.resume and (args.run_dir or args.data or args.config != DEFAULT_CONFIG):
        parser.error("--resume takes the run's own config, data and directory")
    from detector.api import ConfigError, TrainingError, train

    try:
        config = None if args.resume else args.config
        train(config, overrides=train_overrides(args), resume=args.resume)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except ConfigError as error:  # detector.engine.faults.RunFailed too: data, disk
        if type(error.__cause__).__name__ == "RunFailed":  # end Keras' progress line first
            print(flush=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # detector.engine.faults.Interrupted once started
        again = f"python train.py --resume {args.resume}" if args.resume else "the same command"
        hint = str(interrupt) or f"before training started; run {again} to start it again"
        print(f"\ninterrupted: {hint}", file=sys.stderr)
        return 130
    return 0


def evaluate_parser() -> argparse.ArgumentParser:
    p = Parser(description="COCO-evaluate a checkpoint or a results file; write its report.")
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="a .keras checkpoint (e.g. runs/x/best.keras) or an exported model "
        "(SavedModel folder, .tflite, .onnx)",
    )
    p.add_argument("--detections", help="score this COCO results JSON instead of a checkpoint")
    p.add_argument("--data", help="dataset spec YAML (default: the checkpoint's run config)")
    p.add_argument("--split", default="val")
    p.add_argument("--out", help="report folder (default: a new val, val-2, ... beside it)")
    p.add_argument("--conf", type=float, help="report operating point (default 0.25)")
    p.add_argument("--iou", type=float, help="NMS IoU (default: the run's eval.nms_iou)")
    p.add_argument("--max-det", type=int, help="per image (default: eval.max_detections)")
    p.add_argument("--save-json", action="store_true", help="COCO results OUT/predictions.json")
    p.add_argument("--voc", action="store_true", help="also print VOC mAP@0.5")
    p.add_argument("--sizes", help="speed/accuracy sweep over input sizes, e.g. 224,288,320")
    p.add_argument("--input-size", type=int, help="default: the checkpoint's input size")
    p.add_argument("--batch-size", type=int, help="default: the run's eval.batch_size")
    p.add_argument("--json", help="write the metrics dict (and the report) here")
    return p


def evaluate_main(argv=None) -> int:
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    if bool(args.checkpoint) == bool(args.detections):
        parser.error("give either CHECKPOINT or --detections RESULTS.json")
    if args.detections and not args.data:
        parser.error("--detections needs --data SPEC (the ground truth)")
    from detector.api import DetectorError, evaluate

    try:
        evaluate(**vars(args))
    except DetectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
