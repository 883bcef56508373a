"""COCO results files (``evaluate.py --detections FILE``): read, checked, cleaned.

A results file is a JSON list of objects ``{"image_id", "category_id", "bbox": [x, y, w, h]
(original image pixels, w and h > 0), "score"}``, every number finite. A file of another
shape (not JSON, an object, a list of numbers) is a `ValueError` naming the file. An entry
that cannot be scored (a key missing, a number that is not finite, a box that is not 4
numbers with positive size, an image or category id the ground truth does not have) is
skipped and counted by reason, so that it can never count as a hit: pycocotools would
score NaN boxes and scores as matches, and refuses unknown image ids with an assert.
"""

import json
import math
from collections import Counter
from collections.abc import Collection
from typing import Any

KEYS = ("image_id", "category_id", "bbox", "score")


def read_results(path: str) -> list[dict[str, Any]]:
    """The entries of the results file at `path`, checked to be a JSON list of objects.

    Raises:
        ValueError: naming `path`: file missing or unreadable, not JSON, not a list, or an
            entry that is not an object.
    """
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--detections: file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"--detections: expected a file, found a folder: {path}") from None
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        raise ValueError(f"--detections: not a JSON file: {path}") from None
    except OSError as e:
        raise ValueError(f"--detections: cannot read {path} ({e.__class__.__name__})") from None
    if not isinstance(entries, list):
        raise ValueError(
            f"--detections: expected a JSON list of COCO results, got {_json_type(entries)}: {path}"
        )
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(
                f"--detections: expected a JSON list of COCO result objects, entry {index} "
                f"is {_json_type(entry)}: {path}"
            )
    return entries


def _json_type(value: Any) -> str:
    """JSON's name for the type of a parsed value, with its article ("an object")."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), "null" if value is None else "a number")


def _number(value: Any) -> float | None:
    """`value` as a float, or None if it is not a JSON number (booleans are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        return math.inf


def _problem(entry: dict[str, Any]) -> str | None:
    """Why `entry` cannot be scored (ids not checked here), or None."""
    for key in KEYS:
        if key not in entry:
            return f"missing {key}"
    for key in ("image_id", "category_id", "score"):
        value = _number(entry[key])
        if value is None:
            return f"non-numeric {key}"
        if not math.isfinite(value):
            return f"non-finite {key}"
    box = entry["bbox"]
    if not isinstance(box, list) or len(box) != 4:
        return "bbox not 4 numbers"
    numbers = [_number(v) for v in box]
    if any(v is None for v in numbers):
        return "bbox not 4 numbers"
    if not all(math.isfinite(v) for v in numbers):
        return "non-finite bbox"
    if numbers[2] <= 0 or numbers[3] <= 0:
        return "bbox width/height <= 0"
    return None


def clean_results(
    entries: list[dict[str, Any]], image_ids: Collection[int], category_ids: Collection[int]
) -> tuple[list[dict[str, Any]], Counter]:
    """The entries that can be scored against a ground truth of `image_ids` and
    `category_ids`, as fresh dicts of the four `KEYS` (ids int, numbers float), and the
    count of skipped entries by reason (``"unknown image_id"``, ``"non-finite score"``, ...).
    """
    known_images, known_categories = set(image_ids), set(category_ids)
    kept, skipped = [], Counter()
    for entry in entries:
        problem = _problem(entry)
        if problem is None and entry["image_id"] not in known_images:
            problem = "unknown image_id"
        if problem is None and entry["category_id"] not in known_categories:
            problem = "unknown category_id"
        if problem is not None:
            skipped[problem] += 1
            continue
        kept.append(
            {
                "image_id": int(entry["image_id"]),
                "category_id": int(entry["category_id"]),
                "bbox": [float(v) for v in entry["bbox"]],
                "score": float(entry["score"]),
            }
        )
    return kept, skipped


def skipped_line(path: str, skipped: Counter) -> str | None:
    """One line reporting the skipped entries, most frequent reason first, or None:
    ``--detections FILE: 3 entries skipped: 2 unknown image_id, 1 non-finite score``."""
    total = sum(skipped.values())
    if not total:
        return None
    reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.most_common())
    noun = "entry" if total == 1 else "entries"
    return f"--detections {path}: {total} {noun} skipped: {reasons}"
