"""Small datasets written by tests: drawn images, the same boxes in coco / voc / yolo form."""

import os

import cv2
import numpy as np
import yaml

from detector.data.export import write_coco, write_voc, write_yolo
from detector.data.records import Dataset, Record

NAMES = ["red", "green", "blue"]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def make_records(folder: str, count: int = 6, seed: int = 0) -> list[Record]:
    """`count` JPEGs of filled rectangles in `folder`; image 2 has none (a negative),
    image 1 also has a grey ignore region. Varied sizes, one image in a subfolder."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        height, width = int(rng.integers(60, 120)), int(rng.integers(60, 160))
        image = np.full((height, width, 3), 30, np.uint8)
        n = 0 if i == 2 else int(rng.integers(1, 4))
        boxes, classes = [], []
        for _ in range(n):
            w, h = int(rng.integers(10, width // 2)), int(rng.integers(10, height // 2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            cls = int(rng.integers(len(NAMES)))
            cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), COLOURS[cls][::-1], -1)
            boxes.append([x, y, x + w, y + h])
            classes.append(cls)
        ignore = np.zeros((0, 4), np.float32)
        if i == 1:
            ignore = np.array([[0, 0, 8, 8]], np.float32)
        rel = f"sub/img{i}.jpg" if i == 3 else f"img{i}.jpg"
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        records.append(Record(
            image_id=i + 1, path=path, height=height, width=width,
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            classes=np.asarray(classes, np.int32), ignore=ignore,
        ))  # fmt: skip
    return records


def write_all_formats(root: str, count: int = 6, seed: int = 0) -> dict[str, str]:
    """One image set under `root`/images with its boxes as coco, voc and yolo; returns
    {format: spec path} (train and val are the same folder)."""
    images = os.path.join(root, "images")
    records = make_records(images, count, seed)
    dataset = Dataset(records, list(NAMES), [1, 2, 3], None)
    write_coco(dataset, images, os.path.join(root, "coco.json"))
    write_voc(dataset, images, os.path.join(root, "xml"))
    write_yolo(dataset, images, os.path.join(root, "labels"))
    splits = {
        "coco": {"images": "images", "annotations": "coco.json"},
        "voc": {"images": "images", "annotations": "xml"},
        "yolo": {"images": "images", "labels": "labels"},
    }
    specs = {}
    for fmt, split in splits.items():
        spec = {"format": fmt, "train": split, "val": split}
        if fmt != "coco":
            spec["names"] = list(NAMES)
        specs[fmt] = os.path.join(root, f"{fmt}.yaml")
        with open(specs[fmt], "w") as f:
            yaml.safe_dump(spec, f)
    return specs


def by_file(dataset: Dataset) -> dict[str, Record]:
    """Records keyed by image file name (ids differ between formats)."""
    return {os.path.basename(r.path): r for r in dataset.records}
