"""YOLO txt (Ultralytics / darknet layout) -> `Dataset`.

A split is an images folder and a labels folder, the label of ``images/a/b.jpg`` being
``labels/a/b.txt`` (`read_yolo`), or a list of (image, label file) pairs
(`read_yolo_files`; Ultralytics and darknet lists, `detector.data.image_lists`). Each
line is ``class cx cy w h`` normalised to the image as displayed (EXIF orientation
applied, 0..1), optionally followed by a confidence that is ignored (``predict.py
--save-txt`` writes ``class cx cy w h conf``), or an Ultralytics polygon ``class x1 y1 x2
y2 ...`` (an odd count of at least 7 values), whose bounding box is used. An image
without a label file, or with an empty one, is a negative. Image ids are 1-based
positions in the sorted image listing (in the pairs' order); the dataset's category ids
are the class indices themselves.

Bad input follows `detector.data.policy`: a line that does not parse is skipped
(`annotation_malformed`) and the file's other lines are kept; a class index outside
0..C-1 drops the box (`class_unknown`); a label file with no image, or an image whose
header cannot be read, is counted and skipped.
"""

import os

import numpy as np

from detector.data.files import image_size, list_images
from detector.data.image_checks import MAX_PIXELS, ImageTooLarge
from detector.data.policy import build_records, clean_boxes, inspect_image
from detector.data.records import Dataset, Problems


def read_yolo(
    images_dir: str, labels_dir: str, names: list[str], max_pixels: int = MAX_PIXELS
) -> Dataset:
    """Reads one split laid out as an images folder and a labels folder.

    Args:
        images_dir: str. Folder of images (searched recursively).
        labels_dir: str. Folder of ``.txt`` label files mirroring `images_dir`.
        names: list[str]. Class names; a label's class index points into it.
        max_pixels: int. Images whose header declares more are skipped
            (`image_too_large`). Defaults to `MAX_PIXELS`.
    """
    images_dir, labels_dir = os.path.abspath(images_dir), os.path.abspath(labels_dir)
    problems = Problems()
    files = list_images(images_dir)
    stems = {os.path.splitext(f)[0] for f in files}
    for label in _list_labels(labels_dir):
        if os.path.splitext(label)[0] not in stems:
            problems.add(
                "image_missing",
                f"{os.path.join(labels_dir, label)}: no image "
                f"{os.path.splitext(label)[0]}.* in {images_dir}",
            )
    pairs = [
        (os.path.join(images_dir, rel), os.path.join(labels_dir, os.path.splitext(rel)[0] + ".txt"))
        for rel in files
    ]
    return read_yolo_files(pairs, names, problems, max_pixels)


def read_yolo_files(
    pairs: list[tuple[str, str]],
    names: list[str],
    problems: Problems | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Dataset:
    """Reads one split given as (image path, label path) pairs, in that order.

    Image ids are the 1-based positions in `pairs`; a missing label file makes the image
    a negative. `problems`: counts so far (e.g. of the listing), added to. Images whose
    header declares over `max_pixels` pixels are skipped (`image_too_large`).
    """
    problems = Problems() if problems is None else problems
    records_info, rows = [], []
    for image_id, (path, label) in enumerate(pairs, start=1):
        path = os.path.abspath(path)
        try:
            size = image_size(path, max_pixels)
        except ImageTooLarge as error:
            problems.add("image_too_large", str(error))
            continue
        if size is None:
            fatal, _, _ = inspect_image(path, max_pixels)
            problems.add(fatal or "image_unreadable", path)
            continue
        index = len(records_info)
        records_info.append((image_id, path, size))
        for line_no, cls, box in _read_labels(label, problems):
            rows.append((index, cls, box, f"{label}: line {line_no}"))

    image_index = np.asarray([r[0] for r in rows], np.int64)
    classes = np.asarray([r[1] for r in rows], np.int64)
    norm = np.asarray([r[2] for r in rows], np.float64).reshape(-1, 4)
    sizes = np.asarray([info[2] for info in records_info], np.float64).reshape(-1, 2)
    limits = sizes[image_index][:, [1, 0, 1, 0]]
    with np.errstate(over="ignore"):  # 1e308 * width: inf, counted by clean_boxes
        xyxy = norm * limits
    keep, clipped = clean_boxes(
        xyxy, (classes >= 0) & (classes < len(names)), limits, problems, [r[3] for r in rows]
    )
    records = build_records(records_info, image_index[keep], clipped[keep], classes[keep])
    return Dataset(
        records=records,
        names=list(names),
        category_ids=list(range(len(names))),
        annotation_file=None,
        problems=problems,
    )


def _list_labels(folder: str) -> list[str]:
    """Relative paths of the ``.txt`` files under `folder`."""
    found = []
    for root, _, files in os.walk(folder):
        found += [
            os.path.relpath(os.path.join(root, f), folder) for f in files if f.endswith(".txt")
        ]
    return found


def _read_labels(path: str, problems: Problems):
    """Yields (line number, class index, xyxy normalised) for each parsable line of `path`.

    A class index that is not an integer makes the line malformed; an out-of-range one is
    left for `clean_boxes` to drop.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as e:
        problems.add(
            "annotation_malformed", f"{path}: cannot read as text ({e.__class__.__name__})"
        )
        return
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        polygon = len(values) >= 7 and len(values) % 2 == 1
        if not values or not (len(values) in (5, 6) or polygon) or not values[0].is_integer():
            problems.add(
                "annotation_malformed",
                f"{path}: line {line_no}: expected 'class cx cy w h [conf]' or a polygon",
            )
            continue
        if polygon:
            xy = np.asarray(values[1:]).reshape(-1, 2)
            box = [*xy.min(axis=0), *xy.max(axis=0)]
        else:
            cx, cy, w, h = values[1:5]  # a 6th value is predict.py's confidence
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        cls = int(values[0])
        yield line_no, cls if 0 <= cls < 2**31 else -1, box  # -1: an unknown class
