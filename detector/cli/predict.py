"""The command line ``predict.py``: detections on images, folders, lists, videos or a
webcam, written as drawn images, YOLO labels and COCO JSON. Bad input is one ``error: ...``
line on stderr, exit 2."""

import argparse
import contextlib
import sys
import warnings

from detector.api.evaluate import load_detector
from detector.cli.train import Parser
from detector.utils.atomic import describe_os_error
from detector.utils.limits import check_batch_size, check_input_size, check_max_det
from detector.utils.runlock import run_lock

OUT_HOLDER = "(another predict.py); wait for it or pass another --out"


def predict_parser() -> argparse.ArgumentParser:
    p = Parser(description="Detect objects in images, folders, globs, lists, videos or a webcam.")
    p.add_argument("checkpoint", help="a .keras checkpoint or an exported model")
    p.add_argument(
        "source", help="an image, a folder, a glob, a .txt list, a video or a webcam index"
    )
    p.add_argument("--conf", type=float, default=0.25, help="lowest score kept (default 0.25)")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU (default 0.45)")
    p.add_argument("--agnostic", action="store_true", help="NMS across classes")
    p.add_argument("--max-det", type=int, default=100, help="detections per image (100)")
    p.add_argument("--classes", nargs="+", metavar="CLASS", help="keep these (ids or names)")
    p.add_argument("--input-size", type=int, help="default: the checkpoint's input size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", help="output folder (default: RUN/predict, RUN/predict-2, ...)")
    p.add_argument("--save-txt", action="store_true", help="YOLO labels in OUT/labels/")
    p.add_argument("--save-json", action="store_true", help="COCO results OUT/predictions.json")
    p.add_argument("--no-save-img", action="store_true", help="do not write drawn images")
    p.add_argument("--data", help="dataset spec: the JSON gets its image ids, by file name")
    p.add_argument("--split", default="val", help="split of --data (default val)")
    return p


def check_predict_flags(args: argparse.Namespace) -> None:
    """ValueError naming the first flag whose value is out of range."""
    for flag, value in (("--conf", args.conf), ("--iou", args.iou)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{flag}: expected a number in [0, 1], got {value}")
    check_max_det("--max-det", args.max_det)
    if args.input_size is not None:
        check_input_size("--input-size", args.input_size)
    check_batch_size("--batch-size", args.batch_size, args.input_size or 0)
    if args.data and not args.save_json:
        raise ValueError("--data: only the JSON uses it; add --save-json")


def class_ids(classes: list[str] | None, names: list[str]) -> list[int] | None:
    """``--classes`` (class ids or names) as class ids."""
    if classes is None:
        return None
    ids = []
    for value in classes:
        index = int(value) if value.isdigit() else (names.index(value) if value in names else -1)
        if not 0 <= index < len(names):
            raise ValueError(f"--classes: unknown class {value!r}; the classes are {names}")
        ids.append(index)
    return ids


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one ``warning: ...`` line on stderr, as the command line reports."""
    print(f"warning: {message}", file=sys.stderr)


def predict_main(argv=None) -> int:
    args = predict_parser().parse_args(argv)
    try:
        with contextlib.ExitStack() as stack:
            run = prepare_predict(args, stack)
            done = run_quietly(run)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a write the system refuses (read-only, disk full)
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    if done["images"] == 0:
        print(f"error: SOURCE: no readable image in {args.source}", file=sys.stderr)
        return 2
    return 0


def run_quietly(run) -> dict:
    """``run()`` with its warnings printed as one ``warning:`` line each."""
    with warnings.catch_warnings():  # restores showwarning after the run
        warnings.showwarning = one_line_warning
        return run()


def prepare_predict(args: argparse.Namespace, stack: contextlib.ExitStack):
    """Checks the arguments, opens the source, loads the model and claims the output
    folder (an ``--out`` is locked until `stack` closes: one run writes it at a time);
    returns the run."""
    from detector.inference.outputs import (
        ImageIds,
        Writers,
        output_dir,
        run_folder,
        run_predictions,
    )
    from detector.inference.sources import open_source

    check_predict_flags(args)
    source = open_source(args.source)
    if args.data and source.is_video:
        raise ValueError("--data: matches image files by name; SOURCE is a video")
    image_ids = None
    if args.data:
        from detector.data.spec import load_annotations

        image_ids = ImageIds(load_annotations(args.data, args.split))
    detector = load_detector(args.checkpoint, args.input_size)
    size = args.input_size or detector.metadata.input_size
    check_batch_size("--batch-size", args.batch_size, size)
    settings = {
        "conf": args.conf,
        "iou": args.iou,
        "max_det": args.max_det,
        "agnostic": args.agnostic,
        "classes": class_ids(args.classes, detector.names),
        "input_size": args.input_size,
    }
    if args.out:
        folder = stack.enter_context(run_lock(args.out, "--out", OUT_HOLDER))
    else:
        folder = output_dir(run_folder(args.checkpoint))
    save = (not args.no_save_img, args.save_txt, args.save_json)
    writers = Writers(folder, *save, image_ids=image_ids, fps=source.fps)
    return lambda: run_predictions(detector, source, writers, settings, args.batch_size)
