"""``detector.evaluate``: COCO-evaluate a checkpoint, an exported model or a results file,
with the validation report; ``evaluate.py`` / ``detector val`` are its command line.

    import detector
    report = detector.evaluate("runs/default/best.keras")            # its run's val split
    print(report.metrics["AP"], report.out_dir)
    report = detector.evaluate("best.tflite", data="my.yaml", split="test", conf=0.3)
    score = detector.evaluate(detections="results.json", data="my.yaml").metrics["AP"]

The keyword arguments are the command line's flags (``--max-det`` is ``max_det``); their
errors are `ConfigError`s with the command line's messages.
"""

import os
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

from detector.config.schema import load_config
from detector.utils.errors import ConfigError, config_errors


@dataclass
class Report:
    """What an evaluation measured and wrote.

    Attributes:
        metrics: dict. The 12 COCO numbers (``AP``, ``AP50``, ... ``ARl``) and
            ``per_class`` (AP by class name).
        per_class: list of dict. The report's per-class rows (P, R, F1, AP50, AP at the
            operating point); [] when no report was made (``detections`` without ``out``).
        errors: dict or None. The TIDE error breakdown (AP50 points per error type).
        files: list of str. The paths written.
        out_dir: str or None. The report folder.
        sweep: list of dict or None. The speed/accuracy rows (with ``sizes``).
        report: dict. The whole report as ``report.json`` holds it ({} without one).
    """

    metrics: dict
    per_class: list = field(default_factory=list)
    errors: dict | None = None
    files: list = field(default_factory=list)
    out_dir: str | None = None
    sweep: list | None = None
    report: dict = field(default_factory=dict)

    @classmethod
    def of(cls, summary: dict, out_dir: str) -> "Report":
        """From `detector.evaluation.validate`'s summary dict."""

        report = summary["report"]
        return cls(
            metrics=summary["metrics"],
            per_class=report.get("rows", []),
            errors=report.get("errors"),
            files=[os.path.join(out_dir, name) for name in summary["files"]],
            out_dir=out_dir,
            sweep=summary.get("sweep"),
            report=report,
        )

    def as_dict(self) -> dict:
        """What ``evaluate.py --json`` writes: the metrics, ``report`` and ``sweep``."""
        if not self.report:
            return dict(self.metrics)
        extra = {"sweep": self.sweep} if self.sweep is not None else {}
        return {**self.metrics, "report": self.report, **extra}


def evaluate(
    checkpoint: str | None = None,
    *,
    data: str | None = None,
    split: str = "val",
    detections: str | None = None,
    out: str | None = None,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    save_json: bool = False,
    voc: bool = False,
    sizes: str | list[int] | None = None,
    input_size: int | None = None,
    batch_size: int | None = None,
    json: str | None = None,
) -> Report:
    """COCO-evaluates `checkpoint` (a ``.keras`` or an exported model) on a split, or
    scores the results file `detections`, prints the COCO table and the report, writes
    the report folder; see ``evaluate.py -h`` for each argument.

    Args:
        checkpoint: str. The model; or None with `detections`.
        data: str. Dataset spec. Defaults to the checkpoint's run config's.
        split: str. Defaults to "val".
        detections, out, conf, iou, max_det, save_json, voc, sizes, input_size,
            batch_size, json: the flags of the same names (``--max-det`` ...). `sizes`:
            a list of input sizes or "224,288". Defaults as on the command line.

    Returns:
        Report.

    Raises:
        ConfigError: bad input, with the command line's message.
    """
    if bool(checkpoint) == bool(detections):
        raise ConfigError("give either CHECKPOINT or --detections RESULTS.json")
    if detections and not data:
        raise ConfigError("--detections needs --data SPEC (the ground truth)")
    if isinstance(sizes, list | tuple):
        sizes = ",".join(str(size) for size in sizes)
    args = SimpleNamespace(**{k: v for k, v in locals().items() if k != "json"}, json=json)
    from detector.utils.atomic import check_writable

    with config_errors():
        if json:  # before the evaluation, not after it
            check_writable("--json", json)
        report = evaluate_command(args)
        if json:
            from detector.evaluation.coco import write_json

            write_json(report.as_dict(), json)
    return report


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


def check_evaluate_flags(args) -> None:
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


def evaluate_command(args) -> "Report":
    """Runs the evaluation the arguments ask for and prints it."""
    check_evaluate_flags(args)
    sizes = parse_sizes(args.sizes)
    from detector.evaluation.validate import DEFAULT_CONF

    conf = DEFAULT_CONF if args.conf is None else args.conf
    if args.detections:
        return evaluate_detections(args, conf)
    return evaluate_checkpoint(args, conf, sizes)


def evaluate_detections(args, conf: float) -> "Report":
    """Scores a COCO results file (`detector.evaluation.results_file`: a file of the wrong
    shape is a ValueError, entries that cannot be scored are skipped and reported on one line); the
    report too with ``--out``."""
    from detector.data.coco import ground_truth
    from detector.data.spec import load_annotations
    from detector.evaluation.coco import coco_metrics, format_metrics
    from detector.evaluation.results_file import clean_results, read_results, skipped_line
    from detector.evaluation.validate import validate_results

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
        return Report(metrics)
    summary = validate_results(truth, results, dataset, out_dir=args.out, conf=conf, voc=args.voc)
    return Report.of(summary, args.out)


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


def evaluate_checkpoint(args, conf: float, sizes: list[int]) -> "Report":
    """Evaluates a checkpoint or an export at its run's ``eval.*`` settings, the flags
    overriding them, and writes its report (`detector.evaluation.validate`)."""
    from detector.config.schema import EvalConfig
    from detector.data.spec import load_dataset
    from detector.engine.build import eval_kwargs
    from detector.evaluation.validate import check_sweep, validate
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
    return Report.of(summary, out)
