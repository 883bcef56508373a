"""COCO `instances` json -> `Dataset`.

Only the json is read (image sizes come from its `images` entries; no image is opened).
Category ids, sorted ascending, map to contiguous class indices 0..C-1. Policy for bad
annotations (each counted in `Dataset.problems` under the first reason that applies):
unknown image or category id -> dropped; non-finite or w <= 0 or h <= 0 -> dropped;
partly outside the image -> clipped; wholly outside -> dropped. `iscrowd=1` annotations
become the record's ignore regions. Images without annotations are kept as negatives.
"""

import json
import os
from collections import Counter
from typing import Any

import numpy as np

from detector.data.records import Dataset, Record


def read_coco(annotation_file: str, images_dir: str) -> Dataset:
    """Read a COCO json into a `Dataset`.

    Args:
        annotation_file: str. Path of the COCO json (`images`, `categories`, optional
            `annotations`).
        images_dir: str. Folder that each image's `file_name` is relative to.

    Returns:
        Dataset with one record per json image, in json order; boxes xyxy in pixels.
    """
    annotation_file = os.path.abspath(annotation_file)
    data = _load_json(annotation_file)
    category_ids, names = _categories(data, annotation_file)
    image_ids, heights, widths, file_names = _images(data, annotation_file)
    ann_image, ann_category, bbox, crowd = _annotations(data, annotation_file)

    img_idx, known_image = _lookup(image_ids, ann_image)
    cls, known_category = _lookup(np.asarray(category_ids, np.int64), ann_category)
    limits = np.stack([widths, heights, widths, heights], axis=1)[img_idx]
    keep, clipped, problems = _clean(bbox, limits, known_image, known_category)

    objects, ignores = keep & ~crowd, keep & crowd
    num_images = len(image_ids)
    boxes = _group(img_idx[objects], clipped[objects].astype(np.float32), num_images)
    classes = _group(img_idx[objects], cls[objects].astype(np.int32), num_images)
    ignore = _group(img_idx[ignores], clipped[ignores].astype(np.float32), num_images)
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
    return Dataset(
        records=records,
        names=names,
        category_ids=category_ids,
        annotation_file=annotation_file,
        problems=problems,
    )


def _load_json(path: str) -> dict[str, Any]:
    """The parsed top-level object of a json file, with errors that name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return data


def _section(data: dict[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    """`data[key]`, a non-empty list; a missing or empty `annotations` list means no objects."""
    if key not in data and key == "annotations":
        return []
    if not isinstance(data.get(key), list):
        raise ValueError(f"{path}: {key}: expected a list")
    if not data[key] and key != "annotations":
        raise ValueError(f"{path}: {key}: empty")
    return data[key]


def _column(items: list[dict[str, Any]], key: str, section: str, path: str) -> list[Any]:
    """`[item[key] for item in items]`, naming the first item that lacks the key."""
    try:
        return [item[key] for item in items]
    except (KeyError, TypeError):
        bad = next(i for i, it in enumerate(items) if not isinstance(it, dict) or key not in it)
        raise ValueError(f"{path}: {section}[{bad}]: missing key '{key}'") from None


def _categories(data: dict[str, Any], path: str) -> tuple[list[int], list[str]]:
    """Category ids sorted ascending, and their names in the same order."""
    cats = _section(data, "categories", path)
    ids = [int(i) for i in _column(cats, "id", "categories", path)]
    names = [str(n) for n in _column(cats, "name", "categories", path)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: categories: duplicate category id")
    order = np.argsort(ids, kind="stable")
    return [ids[i] for i in order], [names[i] for i in order]


def _images(
    data: dict[str, Any], path: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Image ids (I,) int64, heights (I,) and widths (I,) float64 pixels, file names."""
    images = _section(data, "images", path)
    ids = np.asarray(_column(images, "id", "images", path), np.int64)
    heights = np.asarray(_column(images, "height", "images", path), np.float64)
    widths = np.asarray(_column(images, "width", "images", path), np.float64)
    names = [str(n) for n in _column(images, "file_name", "images", path)]
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{path}: images: duplicate image id")
    bad = np.flatnonzero(~((heights > 0) & (widths > 0)))
    if len(bad):
        raise ValueError(f"{path}: images[{bad[0]}]: width and height must be > 0")
    return ids, heights, widths, names


def _annotations(
    data: dict[str, Any], path: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image ids (N,), category ids (N,), bbox (N, 4) float64 xywh pixels, iscrowd (N,) bool."""
    anns = _section(data, "annotations", path)
    image_id = np.asarray(_column(anns, "image_id", "annotations", path), np.int64)
    category_id = np.asarray(_column(anns, "category_id", "annotations", path), np.int64)
    bbox = _column(anns, "bbox", "annotations", path)
    crowd = np.asarray([a.get("iscrowd", 0) for a in anns], bool)
    try:
        xywh = np.asarray(bbox, np.float64).reshape(len(anns), 4)
    except (ValueError, TypeError):
        bad = next(i for i, b in enumerate(bbox) if not isinstance(b, list) or len(b) != 4)
        raise ValueError(f"{path}: annotations[{bad}].bbox: expected [x, y, w, h]") from None
    return image_id, category_id, xywh, crowd


def _lookup(table: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each key in `table` (unique values), and whether it was found at all."""
    order = np.argsort(table, kind="stable")
    index = order[np.searchsorted(table[order], keys).clip(0, len(table) - 1)]
    return index, table[index] == keys


def _clean(
    xywh: np.ndarray, limits: np.ndarray, known_image: np.ndarray, known_category: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Apply the drop / clip policy of the module docstring to every annotation.

    Args:
        xywh: float64 (N, 4). COCO boxes, pixels.
        limits: float64 (N, 4). (width, height, width, height) of each box's image.
        known_image / known_category: bool (N,). Whether the box's image / category id
            exists in the json.

    Returns:
        keep bool (N,); boxes float64 (N, 4) xyxy pixels clipped to the image; the counts
        of each reason that occurred.
    """
    problems: Counter[str] = Counter()
    keep = _drop(np.ones(len(xywh), bool), ~known_image, "annotation_unknown_image", problems)
    keep = _drop(keep, ~known_category, "annotation_unknown_category", problems)
    keep = _drop(keep, ~np.isfinite(xywh).all(axis=1), "box_not_finite", problems)
    keep = _drop(keep, (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0), "box_zero_size", problems)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    clipped = np.clip(xyxy, 0.0, limits)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    keep = _drop(keep, empty, "box_outside_image", problems)
    problems["box_clipped"] += int(((clipped != xyxy).any(axis=1) & keep).sum())
    return keep, clipped, {k: v for k, v in problems.items() if v}


def _drop(keep: np.ndarray, bad: np.ndarray, reason: str, problems: Counter[str]) -> np.ndarray:
    """`keep` without the `bad` entries, counting the newly dropped ones under `reason`."""
    problems[reason] += int((keep & bad).sum())
    return keep & ~bad


def _group(image_index: np.ndarray, values: np.ndarray, num_images: int) -> list[np.ndarray]:
    """Split `values` (N, ...) into one array per image 0..num_images-1 (empty if none)."""
    order = np.argsort(image_index, kind="stable")
    bounds = np.cumsum(np.bincount(image_index, minlength=num_images))[:-1]
    return np.split(values[order], bounds)
