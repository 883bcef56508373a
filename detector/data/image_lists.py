"""Splits given as folders of images and list files of image paths, with the YOLO label
of each image found by the Ultralytics / darknet convention.

Used by the Ultralytics dataset YAML (`detector.data.ultralytics`) and darknet's
``obj.data`` (`detector.data.darknet_data`): a split is one or more sources, each a folder
(its images, recursively) or a list file (one image path a line, UTF-8 with or without
a byte-order mark; blank lines and lines starting with ``#`` are skipped; any other line
not ending in an image extension refuses the file, by line number). The split's images
are all of them, sorted by path (duplicates kept, as Ultralytics does), and the label of
``.../images/a/b.jpg`` is ``.../labels/a/b.txt`` (`label_path`).
"""

import os

from detector.data.files import IMAGE_EXTENSIONS, list_images
from detector.data.image_checks import MAX_PIXELS
from detector.data.records import Dataset
from detector.data.yolo import read_yolo_files

# Folder names swapped for ``labels`` to find an image's label file: Ultralytics' and
# darknet's ``images``, and darknet's VOC layout ``JPEGImages``.
IMAGE_FOLDERS = ("images", "JPEGImages")


def label_path(image: str) -> str:
    """The YOLO label file of `image`: the last folder of its path named ``images`` (or
    ``JPEGImages``) replaced by ``labels``, the extension by ``.txt``; beside the image
    (``x.jpg`` -> ``x.txt``) when no folder of its path has such a name."""
    folder, name = os.path.split(image)
    parts = folder.split(os.sep)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in IMAGE_FOLDERS:
            parts[i] = "labels"
            break
    return os.path.join(os.sep.join(parts), os.path.splitext(name)[0] + ".txt")


def read_list(path: str, root: str) -> list[str]:
    """The absolute image paths of a list file.

    A relative path is relative to the list file's folder (Ultralytics' ``./images/...``
    lines); when the list's first relative path is not found there but is under `root`,
    every relative path of the list is relative to `root` (darknet's lines are relative
    to its working directory, the dataset root).
    """
    try:  # utf-8-sig: a byte-order mark is not part of the first path
        with open(path, encoding="utf-8-sig") as f:
            lines = [line.strip() for line in f.read().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the image list ({e.__class__.__name__})") from None
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line and line[0] != "#"]
    others = [n for n, line in numbered if not line.lower().endswith(IMAGE_EXTENSIONS)]
    if others:  # a file that is no image list: named, never quoted
        raise ValueError(
            f"{path}: {len(others)} of its {len(numbered)} lines are not image paths (the "
            f"first: line {others[0]}); expected one image file ({', '.join(IMAGE_EXTENSIONS)}) "
            "a line"
        )
    entries = [line for _, line in numbered]
    base = os.path.dirname(path)
    relative = [e for e in entries if not os.path.isabs(e)]
    if relative:
        here, there = (os.path.join(b, relative[0]) for b in (base, root))
        if not os.path.exists(here) and os.path.exists(there):
            base = root
    return [os.path.normpath(os.path.join(base, e)) for e in entries]


def split_images(sources: list[str], root: str) -> list[str]:
    """The sorted absolute image paths of a split's sources (folders and list files)."""
    found = []
    for source in sources:
        if os.path.isdir(source):
            found += [os.path.join(source, rel) for rel in list_images(source)]
        else:
            found += read_list(source, root)
    return sorted(found)


def list_split(sources: list[str], root: str) -> dict:
    """A split of a spec given by sources: ``{"images": the folder holding all its
    images, "sources": sources, "root": root}`` (`images` is what the images' paths are
    relative to, e.g. when `python -m detector.data convert` writes annotations)."""
    folders = [s for s in sources if os.path.isdir(s)]
    for source in sources:
        if not os.path.isdir(source):
            folders += sorted({os.path.dirname(p) for p in read_list(source, root)})
    common = os.path.commonpath(folders) if folders else os.path.dirname(sources[0])
    return {"images": common, "sources": list(sources), "root": root}


def read_list_split(
    split: dict, names: list[str], where: str, max_pixels: int = MAX_PIXELS
) -> Dataset:
    """The records of a split made by `list_split`; image ids are 1-based positions in
    `split_images`' order; images over `max_pixels` pixels are skipped (`read_yolo_files`).

    A split of images none of which has a label file is an error naming `where` (the
    spec and split): its labels are elsewhere, not a split of negatives.
    """
    pairs = [(image, label_path(image)) for image in split_images(split["sources"], split["root"])]
    if pairs and not any(os.path.isfile(label) for _, label in pairs):
        raise ValueError(
            f"{where}: no label file for any of its {len(pairs)} images (looked for e.g. "
            f"{pairs[0][1]}: the image's path with its last images/ or JPEGImages/ "
            "folder replaced by labels/, or beside the image, extension .txt)"
        )
    return read_yolo_files(pairs, names, max_pixels=max_pixels)
