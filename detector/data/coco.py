"""COCO `instances` json <-> `Dataset`, both directions.

`read_coco` reads a json into a `Dataset`; `records_to_coco` writes a dataset's records
as an `instances` dict; `ground_truth` is the pycocotools ground truth that evaluation
scores against (the published json where there is one).

Reading: only the json is read (image sizes come from its `images` entries, by COCO's
convention the size as displayed, EXIF orientation applied; no image is opened here, and
a real size that differs is counted and rescaled, see `detector.data.policy`). Category
ids, sorted ascending, map to contiguous class indices 0..C-1. A json that does not
parse, or whose `categories` are unusable, is an error naming the file; otherwise the
policy of `detector.data.policy` applies: a malformed `images` or `annotations` entry is
skipped (`annotation_malformed`), an annotation of an unknown image id is dropped, and
boxes go through `clean_boxes`. `iscrowd=1` annotations become the record's ignore
regions. Images without annotations are kept as negatives.
"""

import contextlib
import io
import json
import os
from collections.abc import Callable
from numbers import Real
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from detector.data.policy import clean_boxes, group
from detector.data.records import Dataset, Problems, Record


def read_coco(annotation_file: str, images_dir: str) -> Dataset:
    """Read a COCO json into a `Dataset`.

    Args:
        annotation_file: str. Path of the COCO json (`images`, `categories`, optional
            `annotations`).
        images_dir: str. Folder that each image's `file_name` is relative to.

    Returns:
        Dataset with one record per valid json image, in json order; boxes xyxy in pixels.
    """
    annotation_file = os.path.abspath(annotation_file)
    data = _load_json(annotation_file)
    problems = Problems()
    category_ids, names = _categories(data, annotation_file)
    image_ids, heights, widths, file_names = _images(data, annotation_file, problems)
    index, ann_image, ann_category, bbox, crowd = _annotations(data, annotation_file, problems)

    img_idx, known_image = _lookup(image_ids, ann_image)
    for i in np.flatnonzero(~known_image)[:3]:
        problems.add(
            "annotation_unknown_image",
            f"{annotation_file}: annotations[{index[i]}]: image_id {ann_image[i]}",
        )
    problems.add("annotation_unknown_image", None, max(0, int((~known_image).sum()) - 3))
    index, img_idx = index[known_image], img_idx[known_image]
    ann_category, bbox, crowd = ann_category[known_image], bbox[known_image], crowd[known_image]
    cls, known_category = _lookup(np.asarray(category_ids, np.int64), ann_category)
    limits = np.stack([widths, heights, widths, heights], axis=1)[img_idx]
    xyxy = np.concatenate([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], axis=1)
    where = _Where(annotation_file, index, [file_names[i] for i in img_idx])
    keep, clipped = clean_boxes(xyxy, known_category, limits, problems, where)

    objects, ignores = keep & ~crowd, keep & crowd
    num_images = len(image_ids)
    boxes = group(img_idx[objects], clipped[objects].astype(np.float32), num_images)
    classes = group(img_idx[objects], cls[objects].astype(np.int32), num_images)
    ignore = group(img_idx[ignores], clipped[ignores].astype(np.float32), num_images)
    images_dir = os.path.abspath(images_dir)
    records = [
        Record(
            image_id=int(image_ids[i]),
            path=os.path.join(images_dir, file_names[i]),
            height=int(heights[i]),
            width=int(widths[i]),
            boxes=boxes[i],
            classes=classes[i],
            ignore=ignore[i],
        )
        for i in range(num_images)
    ]
    total = len(data.get("annotations") or [])
    return Dataset(
        records=records,
        names=names,
        category_ids=category_ids,
        annotation_file=annotation_file,
        problems=problems,
        coco_keep=None if int(keep.sum()) == total else np.sort(index[keep]),
    )


class _Where:
    """Lazy per-box labels for problem examples: "json: annotations[i] (file)"."""

    def __init__(self, path: str, index: np.ndarray, files: list[str]):
        self.path, self.index, self.files = path, index, files

    def __getitem__(self, i: int) -> str:
        return f"{self.path}: annotations[{self.index[i]}] ({self.files[i]})"


def _load_json(path: str) -> dict[str, Any]:
    """The parsed top-level object of a json file, with errors that name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return data


def _categories(data: dict[str, Any], path: str) -> tuple[list[int], list[str]]:
    """Category ids sorted ascending, and their names in the same order."""
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise ValueError(f"{path}: categories: expected a non-empty list")
    ids, names = [], []
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or "name" not in cat:
            raise ValueError(f"{path}: categories[{i}]: expected {{id: int, name: str}}")
        ids.append(int(cat["id"]))
        names.append(str(cat["name"]))
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: categories: duplicate category id")
    order = np.argsort(ids, kind="stable")
    return [ids[i] for i in order], [names[i] for i in order]


def _is_int(value: Any) -> bool:
    """An int (not a bool) that fits int64, as ids are stored."""
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _is_number(value: Any) -> bool:
    """A JSON number that float64 holds (NaN and inf included: `clean_boxes` counts
    those; an integer beyond float64 is not a number here)."""
    if not isinstance(value, Real) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _is_size(value: Any) -> bool:
    """An image side in pixels: a number in [1, 2**31)."""
    return _is_number(value) and 1 <= value < 2**31


def _images(
    data: dict[str, Any], path: str, problems: Problems
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Image ids (I,) int64, heights (I,) and widths (I,) float64 pixels, file names.

    Entries without an int id, a file name (a NUL byte in it is none) and positive width
    and height are skipped; a repeated id keeps its first entry.
    """
    images = data.get("images")
    if not isinstance(images, list):
        raise ValueError(f"{path}: images: expected a list")
    ids, heights, widths, names, seen = [], [], [], [], set()
    for i, image in enumerate(images):
        ok = (
            isinstance(image, dict)
            and _is_int(image.get("id"))
            and isinstance(image.get("file_name"), str)
            and "\x00" not in image["file_name"]  # no file system takes it
            and all(_is_size(image.get(k)) for k in ("width", "height"))
            and image["id"] not in seen
        )
        if not ok:
            problems.add(
                "annotation_malformed",
                f"{path}: images[{i}]: expected a new int id, a file_name (without NUL "
                "bytes) and width and height in [1, 2**31)",
            )
            continue
        seen.add(image["id"])
        ids.append(image["id"])
        heights.append(image["height"])
        widths.append(image["width"])
        names.append(image["file_name"])
    return (
        np.asarray(ids, np.int64),
        np.asarray(heights, np.float64),
        np.asarray(widths, np.float64),
        names,
    )


def _annotations(data: dict[str, Any], path: str, problems: Problems):
    """The well-formed annotations: json index (N,), image id (N,), category id (N,),
    bbox (N, 4) float64 xywh pixels, iscrowd (N,) bool. Others are counted and skipped."""
    anns = data.get("annotations") or []
    if not isinstance(anns, list):
        raise ValueError(f"{path}: annotations: expected a list")
    rows = []
    for i, ann in enumerate(anns):
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        ok = (
            isinstance(ann, dict)
            and _is_int(ann.get("image_id"))
            and _is_int(ann.get("category_id"))
            and isinstance(bbox, list)
            and len(bbox) == 4
            and all(_is_number(v) for v in bbox)
        )
        if not ok:
            problems.add(
                "annotation_malformed",
                f"{path}: annotations[{i}]: expected int image_id and category_id and a "
                "bbox of 4 numbers",
            )
            continue
        rows.append((i, ann["image_id"], ann["category_id"], bbox, bool(ann.get("iscrowd", 0))))
    return (
        np.asarray([r[0] for r in rows], np.int64),
        np.asarray([r[1] for r in rows], np.int64),
        np.asarray([r[2] for r in rows], np.int64),
        np.asarray([r[3] for r in rows], np.float64).reshape(-1, 4),
        np.asarray([r[4] for r in rows], bool),
    )


def _lookup(table: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each key in `table` (unique values), and whether it was found at all."""
    if len(table) == 0:
        return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    order = np.argsort(table, kind="stable")
    index = order[np.searchsorted(table[order], keys).clip(0, len(table) - 1)]
    return index, table[index] == keys


def records_to_coco(dataset: Dataset, file_name: Callable[[Record], str] | None = None) -> dict:
    """A COCO ``instances`` dict of the records, with the dataset's image and category ids.

    Boxes and ignore regions (as ``iscrowd=1`` annotations of class 0's category) are xywh
    in image pixels; ``area`` is the box area.

    Args:
        dataset: Dataset.
        file_name: Record -> str. Each image's ``file_name``. Defaults to the base name
            of the record's path.
    """
    file_name = file_name or (lambda record: os.path.basename(record.path))
    images, annotations = [], []
    for record in dataset.records:
        size = {"width": int(record.width), "height": int(record.height)}
        images.append({"id": int(record.image_id), "file_name": file_name(record), **size})
        annotations += _instances(record, dataset.category_ids, first_id=len(annotations) + 1)
    categories = [
        {"id": int(i), "name": n} for i, n in zip(dataset.category_ids, dataset.names, strict=True)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _instances(record: Record, category_ids: list[int], first_id: int) -> list[dict]:
    """The record's boxes, then its ignore regions, as COCO annotation dicts."""
    rows = [(box, int(c), 0) for box, c in zip(record.boxes, record.classes, strict=True)]
    rows += [(box, 0, 1) for box in record.ignore]
    out = []
    for k, (box, cls, crowd) in enumerate(rows):
        x1, y1, x2, y2 = (float(v) for v in box)
        out.append(
            {
                "id": first_id + k,
                "image_id": int(record.image_id),
                "category_id": int(category_ids[cls]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": crowd,
            }
        )
    return out


def ground_truth(dataset: Dataset) -> COCO:
    """The COCO ground truth of exactly the images and boxes of `dataset`.

    COCO data: its own json (areas, crowd flags and ids as published), restricted to the
    records the readers kept and the annotations they accepted. Other formats: built from
    the records (`records_to_coco`).
    """
    if dataset.annotation_file is None:
        data = records_to_coco(dataset)
    else:
        data = _published(dataset)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _published(dataset: Dataset) -> dict:
    """The dataset's json, keeping the images of its records and the accepted annotations."""
    with open(dataset.annotation_file, encoding="utf-8") as f:
        data = json.load(f)
    kept = set(dataset.records.image_ids().tolist())
    annotations = data.get("annotations") or []
    if dataset.coco_keep is not None:
        annotations = [annotations[i] for i in dataset.coco_keep]
    data["images"] = [im for im in data["images"] if isinstance(im, dict) and im.get("id") in kept]
    data["annotations"] = [a for a in annotations if a["image_id"] in kept]
    return data
