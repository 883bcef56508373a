"""The command lines ``train.py`` and ``evaluate.py`` (``predict.py``'s is
`detector.cli.predict`): argument parsing and one call into the library each. Bad input is
one ``error: ...`` line on stderr, exit 2."""

import argparse
import os
import sys

from detector.config.schema import DEFAULT_CONFIG, load_config


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
    try:
        if args.resume:
            config_path = os.path.join(args.resume, "config.yaml")
            if not os.path.isfile(config_path):
                raise ValueError(f"--resume: no run config at {config_path}")
            cfg = load_config(config_path, train_overrides(args))
            cfg.train.run_dir = args.resume
        else:
            cfg = load_config(args.config, train_overrides(args))
        import keras

        from detector.engine.distribute import ClusterError
        from detector.engine.run import TrainingStopped, run

        keras.utils.set_random_seed(cfg.train.seed)
        try:
            run(cfg, resume=bool(args.resume))
        except (TrainingStopped, ClusterError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 3
    except ValueError as error:  # detector.engine.faults.RunFailed too: data, disk
        if type(error).__name__ == "RunFailed":  # end Keras' progress line first
            print(flush=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path the system refuses before the run started
        from detector.engine.faults import describe_os_error

        print(f"error: {describe_os_error(error)}", file=sys.stderr)
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


def run_config(checkpoint: str, source: str = ""):
    """(the run config beside a checkpoint, or beside the checkpoint an export was made
    from (`source`), or None; the first path looked at)."""
    paths = [p for p in (checkpoint, source) if p]
    folders = [os.path.dirname(os.path.abspath(os.path.normpath(p))) for p in paths]
    for folder in folders:
        config_path = os.path.join(folder, "config.yaml")
        if os.path.isfile(config_path):
            return load_config(config_path), config_path
    return None, os.path.join(folders[0], "config.yaml")


def spec_of_run(checkpoint: str, source: str = "") -> str:
    """The dataset spec recorded in the run config (see `run_config`)."""
    cfg, where = run_config(checkpoint, source)
    if cfg is None:
        raise ValueError(f"no --data given and no run config beside the checkpoint: {where}")
    return cfg.data.spec


def evaluate_main(argv=None) -> int:
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    if bool(args.checkpoint) == bool(args.detections):
        parser.error("give either CHECKPOINT or --detections RESULTS.json")
    if args.detections and not args.data:
        parser.error("--detections needs --data SPEC (the ground truth)")
    from detector.utils.atomic import check_writable, describe_os_error

    try:
        if args.json:  # before the evaluation, not after it
            check_writable("--json", args.json)
        output = evaluate_command(args)
        if args.json:
            from detector.evaluation.coco import write_json

            write_json(output, args.json)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path the system refuses
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    return 0


def check_evaluate_flags(args: argparse.Namespace) -> None:
    """ValueError naming the first flag whose value is out of range or does not apply."""
    for flag, value in (("--conf", args.conf), ("--iou", args.iou)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{flag}: expected a number in [0, 1], got {value}")
    from detector.utils.limits import check_batch_size, check_input_size, check_max_det

    if args.max_det is not None:
        check_max_det("--max-det", args.max_det)
    if args.input_size is not None:
        check_input_size("--input-size", args.input_size)
    if args.batch_size is not None:
        check_batch_size("--batch-size", args.batch_size, args.input_size or 0)
    if not args.detections:
        return
    model_only = {"--iou": args.iou, "--max-det": args.max_det, "--sizes": args.sizes}
    model_only.update({"--input-size": args.input_size, "--batch-size": args.batch_size})
    model_only["--save-json"] = args.save_json or None
    for flag, value in model_only.items():
        if value is not None:
            raise ValueError(f"{flag}: applies to a CHECKPOINT's predictions, not to --detections")
    for flag, value in (("--conf", args.conf), ("--voc", args.voc or None)):
        if value is not None and not args.out:
            raise ValueError(f"{flag}: the report of --detections is written with --out DIR")


def parse_sizes(text: str | None) -> list[int]:
    """``--sizes 224,288`` -> [224, 288]; ValueError naming --sizes unless each is a
    positive multiple of 32 up to `detector.utils.limits.MAX_INPUT_SIZE`."""
    from detector.utils.limits import check_input_size

    parts = [] if text is None else [part.strip() for part in text.split(",")]
    sizes = [int(part) if part.isdigit() else 0 for part in parts]
    bad = [part for part, size in zip(parts, sizes, strict=True) if size <= 0 or size % 32]
    if bad:
        raise ValueError(
            f"--sizes: expected positive multiples of 32 (224,288,...), got {bad[0]!r}"
        )
    for size in sizes:
        check_input_size("--sizes", size)
    return sizes


def evaluate_command(args: argparse.Namespace) -> dict:
    """Runs the evaluation the arguments ask for and prints it; returns what ``--json``
    writes: the metrics dict, with ``report`` (and ``sweep``) when a report was made."""
    check_evaluate_flags(args)
    sizes = parse_sizes(args.sizes)
    from detector.evaluation.validate import DEFAULT_CONF

    conf = DEFAULT_CONF if args.conf is None else args.conf
    if args.detections:
        return evaluate_detections(args, conf)
    return evaluate_checkpoint(args, conf, sizes)


def evaluate_detections(args: argparse.Namespace, conf: float) -> dict:
    """Scores a COCO results file (`detector.evaluation.results_file`: a file of the wrong
    shape is a ValueError, entries that cannot be scored are skipped and reported on one line); the
    report too with ``--out``."""
    from detector.data.coco import ground_truth
    from detector.data.spec import load_annotations
    from detector.evaluation.coco import coco_metrics, format_metrics
    from detector.evaluation.results_file import clean_results, read_results, skipped_line
    from detector.evaluation.validate import as_json, validate_results

    entries = read_results(args.detections)
    dataset = load_annotations(args.data, args.split)
    check_not_empty(dataset, args.data, args.split)
    truth = ground_truth(dataset)
    results, skipped = clean_results(entries, truth.getImgIds(), truth.getCatIds())
    report = skipped_line(args.detections, skipped)
    if report:
        print(f"warning: {report}", file=sys.stderr)
    if not args.out:
        metrics = coco_metrics(truth, results)
        print(format_metrics(metrics))
        return metrics
    summary = validate_results(truth, results, dataset, out_dir=args.out, conf=conf, voc=args.voc)
    return as_json(summary)


def check_not_empty(dataset, spec: str, split: str) -> None:
    """ValueError naming the spec and split when it has no image: there is nothing to
    score (pycocotools would report -1, not an AP of 0)."""
    if not len(dataset.records):
        raise ValueError(f"--data {spec}: the {split} split has no images; nothing to evaluate")


def load_detector(checkpoint: str, input_size: int | None):
    """`Detector.load`, refusing an ``--input-size`` an exported model cannot take."""
    from detector.inference.detector import Detector

    detector = Detector.load(checkpoint)
    meta = detector.metadata
    if detector.model is None and input_size not in (None, meta.input_size):
        raise ValueError(
            f"--input-size: this {meta.format} model takes {meta.input_size} only, got {input_size}"
        )
    return detector


def evaluate_checkpoint(args: argparse.Namespace, conf: float, sizes: list[int]) -> dict:
    """Evaluates a checkpoint or an export at its run's ``eval.*`` settings, the flags
    overriding them, and writes its report (`detector.evaluation.validate`)."""
    from detector.config.schema import EvalConfig
    from detector.data.spec import load_dataset
    from detector.engine.build import eval_kwargs
    from detector.evaluation.validate import as_json, check_sweep, validate
    from detector.inference.outputs import output_dir, run_folder

    detector = load_detector(args.checkpoint, args.input_size)
    meta = detector.metadata
    model = detector.model if detector.model is not None else detector
    check_sweep(model, sizes)
    cfg, where = run_config(args.checkpoint, meta.source)
    spec = args.data or spec_of_run(args.checkpoint, meta.source)
    dataset = load_dataset(spec, args.split)
    check_not_empty(dataset, spec, args.split)
    if len(dataset.names) != len(meta.names):
        from detector.utils.safe_yaml import short

        raise ValueError(
            f"the dataset has {len(dataset.names)} classes {short(dataset.names)}, the "
            f"checkpoint {len(meta.names)} {short(meta.names)}"
        )
    kwargs = eval_kwargs(cfg.eval if cfg else EvalConfig())
    flags = {"nms_iou": args.iou, "max_detections": args.max_det, "batch_size": args.batch_size}
    kwargs.update({k: v for k, v in flags.items() if v is not None})
    if detector.model is None and meta.nms:  # the artifact's own NMS runs: say what it runs
        if args.iou is not None and args.iou != meta.iou_threshold:
            raise ValueError(
                f"--iou: this {meta.format} model runs NMS at IoU {meta.iou_threshold:g} "
                f"inside; export it again with --iou {args.iou:g}"
            )
        kwargs["nms_iou"] = meta.iou_threshold
        kwargs["max_detections"] = min(kwargs["max_detections"], meta.max_detections)
        kwargs["score_threshold"] = max(kwargs["score_threshold"], meta.score_threshold)
    input_size = args.input_size or meta.input_size
    from detector.utils.limits import check_batch_size

    flag = "--batch-size" if args.batch_size else f"eval.batch_size ({where if cfg else 'default'})"
    check_batch_size(flag, kwargs["batch_size"], max([input_size, *sizes]))
    print(
        f"{args.checkpoint} on {args.split} ({len(dataset.records)} images, {input_size} px): "
        f"score >= {kwargs['score_threshold']:g}, NMS IoU {kwargs['nms_iou']:g}, "
        f"<= {kwargs['max_detections']} detections per image "
        f"(eval.* of {where if cfg else 'the defaults'}, flags override)"
    )
    out = args.out or output_dir(run_folder(args.checkpoint), "val")
    settings = {"conf": conf, "voc": args.voc, "sizes": sizes, "save_json": args.save_json}
    summary = validate(
        model, dataset, out_dir=out, input_size=input_size, predict_kwargs=kwargs, **settings
    )
    return as_json(summary)
