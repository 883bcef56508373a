"""Write a `Dataset`'s annotations in any supported format (the readers' inverses).

Images are not copied: the annotations refer to the image files where they are, by their
path relative to `images_dir`. Used by ``python -m detector.data convert`` and by the
tests that read one set of boxes through every reader.
"""

import json
import os
import xml.etree.ElementTree as ET

import numpy as np

from detector.data.coco import records_to_coco
from detector.data.records import Dataset, Record
from detector.utils.atomic import atomic_write_text


def _relative(record: Record, images_dir: str) -> str:
    rel = os.path.relpath(record.path, images_dir)
    if rel.startswith(".."):
        raise ValueError(f"{record.path}: not under the images folder {images_dir}")
    return rel


def write_coco(dataset: Dataset, images_dir: str, path: str) -> None:
    """COCO ``instances`` json (`records_to_coco`); ignore regions become ``iscrowd=1``
    annotations."""
    data = records_to_coco(dataset, file_name=lambda record: _relative(record, images_dir))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(data))


def write_voc(dataset: Dataset, images_dir: str, annotations_dir: str) -> None:
    """One Pascal VOC xml per image (``<stem>.xml``, mirroring the images folder);
    ignore regions become ``difficult`` objects of the first class."""
    for r in dataset.records:
        rel = _relative(r, images_dir)
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = rel
        size = ET.SubElement(root, "size")
        for tag, value in (("width", r.width), ("height", r.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(int(value))
        rows = [(b, int(c), 0) for b, c in zip(r.boxes, r.classes, strict=True)]
        rows += [(b, 0, 1) for b in r.ignore]
        for box, cls, difficult in rows:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = dataset.names[cls]
            ET.SubElement(obj, "difficult").text = str(difficult)
            bndbox = ET.SubElement(obj, "bndbox")
            x1, y1, x2, y2 = (float(v) for v in box)
            for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                ET.SubElement(bndbox, tag).text = f"{value:.6g}"
        out = os.path.join(annotations_dir, os.path.splitext(rel)[0] + ".xml")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        atomic_write_text(out, ET.tostring(root, encoding="unicode"))


def write_yolo(dataset: Dataset, images_dir: str, labels_dir: str) -> None:
    """One label file per image with objects (``class cx cy w h`` normalised, 6 decimals).
    YOLO txt has no ignore regions: they are left out."""
    for r in dataset.records:
        if len(r.boxes) == 0:
            continue
        scale = np.array([r.width, r.height] * 2, np.float64)
        norm = np.asarray(r.boxes, np.float64) / scale
        lines = [
            f"{int(c)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}"
            for (x1, y1, x2, y2), c in zip(norm, r.classes, strict=True)
        ]
        out = os.path.join(labels_dir, os.path.splitext(_relative(r, images_dir))[0] + ".txt")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        atomic_write_text(out, "\n".join(lines) + "\n")
