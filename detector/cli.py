"""The two command lines, ``train.py`` and ``evaluate.py``: argument parsing and one call."""

import argparse
import json
import os
import sys

from detector.config import load_config

DEFAULT_CONFIG = "configs/default.yaml"


def quiet_update_checks() -> None:
    """Entry points call this before albumentations is imported: at import it asks PyPI
    for a newer version (a blocking network call of up to 2 s, and a warning offline)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a YOLOv2 detector.")
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
    quiet_update_checks()
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

        from detector.distribute import ClusterError
        from detector.training import TrainingStopped, run

        keras.utils.set_random_seed(cfg.train.seed)
        try:
            run(cfg, resume=bool(args.resume))
        except (TrainingStopped, ClusterError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 3
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="COCO-evaluate a checkpoint or a results file.")
    p.add_argument("checkpoint", nargs="?", help="a .keras checkpoint (e.g. runs/x/best.keras)")
    p.add_argument("--detections", help="score this COCO results JSON instead of a checkpoint")
    p.add_argument("--data", help="dataset spec YAML (default: the checkpoint's run config)")
    p.add_argument("--split", default="val")
    p.add_argument("--input-size", type=int, help="default: the checkpoint's input size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", help="write the metrics dict here")
    return p


def spec_of_run(checkpoint: str) -> str:
    """The dataset spec recorded in the config.yaml beside a checkpoint."""
    config_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.yaml")
    if not os.path.isfile(config_path):
        raise ValueError(f"no --data given and no run config beside the checkpoint: {config_path}")
    return load_config(config_path).data.spec


def evaluate_main(argv=None) -> int:
    quiet_update_checks()
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    if bool(args.checkpoint) == bool(args.detections):
        parser.error("give either CHECKPOINT or --detections RESULTS.json")
    if args.detections and not args.data:
        parser.error("--detections needs --data SPEC (the ground truth)")
    try:
        metrics = evaluate_command(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from detector.evaluation import format_metrics, write_json

    print(format_metrics(metrics))
    if args.json:
        write_json(metrics, args.json)
    return 0


def evaluate_command(args: argparse.Namespace) -> dict:
    """Runs the evaluation the arguments ask for; returns the metrics dict."""
    from detector.data.coco import ground_truth
    from detector.data.spec import load_annotations, load_dataset
    from detector.evaluation import coco_metrics, evaluate_model

    if args.detections:
        if not os.path.isfile(args.detections):
            raise ValueError(f"--detections: file not found: {args.detections}")
        with open(args.detections) as f:
            results = json.load(f)
        truth = ground_truth(load_annotations(args.data, args.split))
        return coco_metrics(truth, results)
    import keras

    if not os.path.isfile(args.checkpoint):
        raise ValueError(f"checkpoint not found: {args.checkpoint}")
    model = keras.models.load_model(args.checkpoint, safe_mode=True)
    head = model.get_layer("yolo_head")
    dataset = load_dataset(args.data or spec_of_run(args.checkpoint), args.split)
    if len(dataset.names) != len(head.class_names):
        raise ValueError(
            f"the dataset has {len(dataset.names)} classes, the checkpoint "
            f"{len(head.class_names)} ({head.class_names})"
        )
    input_size = args.input_size or head.input_size
    if input_size % 32:
        raise ValueError(f"--input-size must be a multiple of 32, got {input_size}")
    metrics, _ = evaluate_model(model, dataset, input_size, batch_size=args.batch_size)
    return metrics
