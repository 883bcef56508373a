"""A darknet ``obj.data`` file, accepted as is as a dataset spec.

    classes = 2
    train = data/train.txt
    valid = data/valid.txt
    names = data/obj.names
    backup = backup/

``train`` and ``valid`` (our val split; ``test`` is our test split) are list files of
image paths, or folders of images; ``names`` is a file of class names, one a line
(optional when ``classes`` is given, which is checked against it); darknet's own keys
(``backup``, ``eval``, ``results``, ``map``, ``top``, ``difficult``) are ignored. A file
named ``*.data``, or whose every line is ``key = value``, is read this way; lines starting
with ``#`` or ``;`` are comments (no comment after a value: a path may hold ``#``).

A relative path is looked for under the file's folder, then under its parent (darknet
reads paths relative to its working directory, which for the usual ``data/obj.data`` is
that parent); a list's relative image paths likewise
(`detector.data.image_lists.read_list`). Labels are YOLO txt files: ``x.jpg`` -> ``x.txt``
beside it, or under ``labels`` instead of an ``images`` or ``JPEGImages`` folder
(`detector.data.image_lists.label_path`).
"""

import os
import re
from typing import Any

from detector.data.image_lists import list_split
from detector.data.spec_checks import class_count, read_text, reject_unknown, resolve

DARKNET_SPLITS = {"train": "train", "valid": "val", "test": "test"}
IGNORED_KEYS = ("backup", "eval", "results", "map", "top", "difficult")
DARKNET_KEYS = ("classes", *DARKNET_SPLITS, "names", *IGNORED_KEYS)
_OPTION = re.compile(r"^[A-Za-z_][\w.-]*\s*=")


def _lines(text: str) -> list[tuple[int, str]]:
    """(line number, stripped line) of the lines that are neither blank nor comments."""
    stripped = ((n, line.strip()) for n, line in enumerate(text.splitlines(), start=1))
    return [(n, line) for n, line in stripped if line and line[0] not in "#;"]


def is_darknet_data(text: str, path: str) -> bool:
    """Whether a spec file is a darknet ``.data`` file: named so, or every line of its
    text is ``key = value``."""
    if path.endswith(".data"):
        return True
    lines = _lines(text)
    return bool(lines) and all(_OPTION.match(line) for _, line in lines)


def darknet_spec(text: str, path: str) -> dict[str, Any]:
    """The checked spec (as `detector.data.spec.load_spec` returns it) of the darknet
    ``.data`` file at `path` whose text is `text`."""
    options = {}
    for line_no, line in _lines(text):
        if not _OPTION.match(line):
            raise ValueError(f"{path}: line {line_no}: expected key = value")
        key, _, value = line.partition("=")
        if key.strip() in options:
            raise ValueError(f"{path}: line {line_no}: {key.strip()}: given twice")
        options[key.strip()] = value.strip()
    reject_unknown(options, DARKNET_KEYS, path, "")
    folder = os.path.dirname(path)
    bases = [folder, os.path.dirname(folder)]
    names = None
    if options.get("names"):
        names = read_names(resolve(options["names"], bases, path, "names"))
    if options.get("classes"):
        count = class_count(options["classes"], path, "classes", names)
        names = names or [f"class_{i}" for i in range(count)]
    if names is None:
        raise ValueError(f"{path}: names: missing (a names file, or classes =)")
    spec: dict[str, Any] = {"path": path, "format": "yolo", "layout": "darknet", "names": names}
    for key, split in DARKNET_SPLITS.items():
        if options.get(key):
            source = resolve(options[key], bases, path, key)
            root = next(b for b in bases if os.path.exists(os.path.join(b, options[key])))
            spec[split] = list_split([source], root)
    if not any(split in spec for split in DARKNET_SPLITS.values()):
        raise ValueError(f"{path}: train: missing (a .data file needs train = and/or valid =)")
    return spec


def read_names(path: str) -> list[str]:
    """Class names of a darknet ``.names`` file: one a line, blank lines skipped."""
    names = [line.strip() for line in read_text(path, "names file").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"{path}: names file without any class name")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names
