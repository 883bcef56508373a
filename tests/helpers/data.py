"""Small datasets written by tests: drawn images, the same boxes in coco / voc / yolo form."""

import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import yaml

from detector.data.convert import write_coco, write_voc, write_yolo
from detector.data.records import Dataset, Record

NAMES = ["red", "green", "blue"]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
# build_augmenter's arguments as the default config gives them (tests override some)
AUGMENT = {
    "hflip": 0.5,
    "scale": (0.75, 1.25),
    "translate": 0.2,
    "hue": 0.1,
    "saturation": 1.5,
    "exposure": 1.5,
    "min_visibility": 0.3,
}


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
        records.append(
            Record(
                image_id=i + 1,
                path=path,
                height=height,
                width=width,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                classes=np.asarray(classes, np.int32),
                ignore=ignore,
            )
        )
    return records


def write_all_formats(root: str, count: int = 6, seed: int = 0) -> dict[str, str]:
    """One image set under `root`/images with its boxes as coco, voc and yolo; returns
    {format: spec path} (train and val are the same folder)."""
    images = os.path.join(root, "images")
    records = make_records(images, count, seed)
    return write_specs(root, Dataset(records, list(NAMES), [1, 2, 3], None))


def write_specs(root: str, dataset: Dataset) -> dict[str, str]:
    """`dataset` (its images under `root`/images) written as coco, voc and yolo
    annotations with a spec for each; returns {format: spec path} (train = val)."""
    images = os.path.join(root, "images")
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
        spec = {"format": fmt, "names": list(dataset.names), "train": split, "val": split}
        specs[fmt] = os.path.join(root, f"{fmt}.yaml")
        with open(specs[fmt], "w") as f:
            yaml.safe_dump(spec, f)
    return specs


def by_file(dataset: Dataset) -> dict[str, Record]:
    """Records keyed by image file name (ids differ between formats)."""
    return {os.path.basename(r.path): r for r in dataset.records}


def damage_annotations(fmt: str, root: str) -> None:
    """Five bad annotations for img0 (zero width, partly outside, wholly outside, unknown
    class, malformed) in the format's own syntax; img0 is >= 60 x 60 px."""
    if fmt == "coco":
        path = os.path.join(root, "coco.json")
        with open(path) as f:
            data = json.load(f)
        img0 = next(im for im in data["images"] if im["file_name"] == "img0.jpg")
        w = img0["width"]
        for cat, bbox in (
            (1, [5, 5, 0, 10]),
            (2, [w - 10, 5, 30, 20]),
            (1, [w + 5, 5, 10, 10]),
            (99, [5, 5, 10, 10]),
        ):
            data["annotations"].append(
                {
                    "id": 900 + len(data["annotations"]),
                    "image_id": img0["id"],
                    "category_id": cat,
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
        data["annotations"].append({"id": 999, "image_id": img0["id"], "category_id": 1})
        with open(path, "w") as f:
            json.dump(data, f)
    elif fmt == "voc":
        path = os.path.join(root, "xml", "img0.xml")
        text = open(path).read()
        w = int(re.search(r"<width>(\d+)</width>", text).group(1))

        def obj(name, box):
            coords = "".join(
                f"<{t}>{v}</{t}>"
                for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
            )
            return f"<object><name>{name}</name><bndbox>{coords}</bndbox></object>"

        extra = (
            obj("red", [6, 6, 5, 16])
            + obj("green", [w - 9, 6, w + 20, 25])
            + obj("red", [w + 6, 6, w + 15, 15])
            + obj("purple", [6, 6, 15, 15])
            + "<object><name>red</name></object>"
        )
        open(path, "w").write(text.replace("</annotation>", extra + "</annotation>"))
    else:
        path = os.path.join(root, "labels", "img0.txt")
        with open(path, "a") as f:
            f.write(
                "0 0.2 0.2 0 0.1\n1 0.98 0.2 0.2 0.2\n0 1.5 0.2 0.1 0.1\n7 0.2 0.2 0.1 0.1\n"
                "1 0.5 abc 0.1 0.1\n"
            )


def damage_images(root: str) -> None:
    """img4 missing, img5 truncated, img6 not an image, img7 grayscale, img8 RGBA,
    img9 16-bit (the last three keep their size and stay usable)."""
    images = os.path.join(root, "images")
    os.remove(os.path.join(images, "img4.jpg"))
    data = open(os.path.join(images, "img5.jpg"), "rb").read()
    open(os.path.join(images, "img5.jpg"), "wb").write(data[: len(data) // 2])
    open(os.path.join(images, "img6.jpg"), "w").write("this is not an image\n")
    for name, convert in (
        ("img7.jpg", lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2GRAY)),
        ("img8.jpg", lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2BGRA)),
        ("img9.jpg", lambda im: im.astype(np.uint16) * 257),
    ):
        path = os.path.join(images, name)
        image = convert(cv2.imread(path))
        ext = ".jpg" if name == "img7.jpg" else ".png"  # PNG bytes behind a .jpg name
        open(path, "wb").write(cv2.imencode(ext, image)[1].tobytes())


def synthetic_spec(root: Path, seed: int, train: int, val: int, size: int) -> Path:
    """The spec of a synthetic dataset under `root` (generated when first read)."""
    spec = root / "spec.yaml"
    spec.write_text(
        "format: synthetic\n"
        f"synthetic: {{seed: {seed}, train_images: {train}, val_images: {val}, size: {size}}}\n"
        "train: {images: images/train, annotations: annotations/train.json}\n"
        "val: {images: images/val, annotations: annotations/val.json}\n"
    )
    return spec


def set_flags(*overrides: str) -> list[str]:
    """``--set`` command-line flags for ``key=value`` overrides."""
    return [flag for override in overrides for flag in ("--set", override)]


# A model small enough to train an epoch in seconds (the tests' runs).
TINY_MODEL = (
    "model.variant=tiny",
    "model.width=0.125",
    "model.input_size=64",
    "data.multiscale=[]",  # configs/default.yaml trains at 256..384
)
