"""An Ultralytics dataset YAML, accepted as is as a dataset spec.

    path: ../datasets/coco128   # dataset root: relative to this file's folder, or absolute;
                                # defaults to this file's folder
    train: images/train2017     # relative to path: a folder of images, a list file of
    val: [images/a, images/b]   # image paths, or a list of those
    test: test.txt              # optional, like val
    names: {0: person, 1: bicycle}   # or a list; optional when nc is given
    nc: 2                       # optional; checked against names
    download: ...               # ignored

Labels are YOLO txt files found by the Ultralytics convention
(`detector.data.image_lists.label_path`: ``.../images/x.jpg`` -> ``.../labels/x.txt``).
A YAML is read this way when it has no ``format:`` key and has a ``path:`` key or a split
given as a path or a list of paths (our own specs give a split as a mapping).
"""

import os
from typing import Any

from detector.data.image_lists import list_split
from detector.data.spec_checks import SPLITS, class_count, class_names, reject_unknown, resolve

ULTRALYTICS_KEYS = ("path", *SPLITS, "names", "nc", "download")


def is_ultralytics(raw: dict[str, Any]) -> bool:
    """Whether a spec file's mapping is an Ultralytics dataset YAML (see the module)."""
    if "format" in raw:
        return False
    return "path" in raw or any(isinstance(raw.get(s), str | list) for s in SPLITS)


def ultralytics_spec(raw: dict[str, Any], path: str) -> dict[str, Any]:
    """The checked spec (as `detector.data.spec.load_spec` returns it) of the Ultralytics
    dataset YAML at `path` whose mapping is `raw`."""
    reject_unknown(raw, ULTRALYTICS_KEYS, path, "")
    folder = os.path.dirname(path)
    root = folder
    if raw.get("path") is not None:
        root = resolve(raw["path"], [folder], path, "path")
        if not os.path.isdir(root):
            raise ValueError(f"{path}: path: expected a folder, found a file: {root}")
    spec: dict[str, Any] = {
        "path": path,
        "format": "yolo",
        "layout": "ultralytics",
        "names": _names(raw, path),
    }
    for split in SPLITS:
        if raw.get(split) is not None:
            spec[split] = list_split(_sources(raw[split], root, path, split), root)
    if not any(split in spec for split in SPLITS):
        raise ValueError(f"{path}: train: missing (a dataset needs train: and/or val:)")
    return spec


def _names(raw: dict[str, Any], path: str) -> list[str]:
    """`names:` (list or map), or ``class_0``.. when only `nc:` is given (as Ultralytics)."""
    names = class_names(raw["names"], path) if raw.get("names") is not None else None
    if raw.get("nc") is not None:
        count = class_count(raw["nc"], path, "nc", names)
        names = names or [f"class_{i}" for i in range(count)]
    if names is None:
        raise ValueError(f"{path}: names: missing (a list or an {{index: name}} map, or nc:)")
    return names


def _sources(value: Any, root: str, path: str, split: str) -> list[str]:
    """A split's value (a path or a non-empty list of paths) as existing absolute paths."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"{path}: {split}: empty list")
    sources = []
    for i, item in enumerate(values):
        key = f"{split}[{i}]" if isinstance(value, list) else split
        sources.append(resolve(item, [root], path, key))
    return sources
