"""Dataset spec files and `load_dataset`, the one entry point from a spec to records.

Three forms of spec file are accepted, each read into the same checked spec:

- ours (YAML): the format and, per split, where the data is; relative paths are resolved
  against the spec file's folder:

      format: coco                 # coco | voc | yolo | synthetic | tfrecord
      names: [cat, dog]            # optional; overrides the annotation file's names
      train: {images: images/train, annotations: annotations/train.json}
      val: {images: images/val, annotations: annotations/val.json}
      test: {images: images/test, annotations: annotations/test.json}   # optional

  Per format, a split is `{images: DIR, annotations: FILE.json}` (coco),
  `{images: DIR, annotations: DIR_OF_XML, ids: FILE}` (voc; `ids`, optional, is a VOC
  ``ImageSets/Main/*.txt`` file of image names that restricts the split) or
  `{images: DIR, labels: DIR_OF_TXT}` (yolo). `names:` is optional for coco (the json has
  them) and voc (default: every object name found in the spec's xml folders, sorted), and
  required for yolo, either as a list or as the path of an Ultralytics dataset YAML whose
  `names:` is a list or an `{index: name}` map. `format: tfrecord` is a packed dataset
  (`detector.data.tfrecord`, written by `python -m detector.data pack`): a split is
  `{packed: DIR}`, the folder with the split's index and TFRecord shards;
- an Ultralytics dataset YAML, as is (`detector.data.ultralytics`);
- a darknet ``obj.data`` file, as is (`detector.data.darknet_data`).

The splits are train, val and test. `load_dataset` opens every image once
(`detector.data.policy.check_images`) unless told not to, so that unusable images are
counted and dropped before training starts.

`format: synthetic` is COCO data that `detector.data.synthetic` generates on first use into
the paths given, from an extra mapping (defaults shown):

    synthetic: {seed: 0, train_images: 1000, val_images: 200, size: 256,
                classes: [circle, rectangle, triangle, ellipse]}
"""

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from detector.data.coco import read_coco
from detector.data.darknet_data import darknet_spec, is_darknet_data
from detector.data.image_checks import MAX_PIXELS
from detector.data.image_lists import read_list_split
from detector.data.policy import check_images as check_dataset_images
from detector.data.records import Dataset
from detector.data.spec_checks import (
    SPLITS,
    class_names,
    mapping,
    parse_yaml,
    read_text,
    read_yaml,
    reject_unknown,
    resolve_spec_path,
    spec_folder,
)
from detector.data.synthetic import MIN_IMAGE_SIZE, SHAPES, Style, write_split
from detector.data.tfrecord import load_packed
from detector.data.ultralytics import is_ultralytics, ultralytics_spec
from detector.data.voc import read_voc, voc_class_names
from detector.data.yolo import read_yolo
from detector.utils.safe_yaml import short

SPEC_KEYS = ("format", "names", "synthetic", *SPLITS)
SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "train_images": 1000,
    "val_images": 200,
    "size": 256,
    "classes": list(SHAPES),
    **asdict(Style()),
}
# (min, max) of the generator's integers: the maxima keep a hostile spec from starting
# an endless generation (10**29 images) or a huge allocation.
SYNTHETIC_RANGES = {
    "seed": (0, 2**32 - 1),
    "train_images": (1, 1_000_000),
    "val_images": (1, 1_000_000),
    "size": (MIN_IMAGE_SIZE, 4096),
    "max_objects": (1, 1000),
}
STYLE_RANGES = {"min_side": (2.0, 10_000.0), "max_side": (2.0, 10_000.0), "clutter": (0.0, 1.0)}


def load_spec(path: str) -> dict[str, Any]:
    """Read and check a dataset spec: ours, an Ultralytics dataset YAML or a darknet
    ``obj.data`` (see the module docstring); `path` may name a packaged spec
    (`resolve_spec_path`).

    Returns:
        {"path": absolute spec path, "format": str, "layout": "spec" | "ultralytics" |
         "darknet", "names": list[str] | None, one entry per split present:
         {key: absolute path} for ours, {"images": the folder holding the split's images,
         "sources": folders and list files, "root": dataset root} for the others,
         "synthetic": the generator's parameters (format synthetic only)}.
    """
    path = resolve_spec_path(path)
    text = read_text(path)
    if is_darknet_data(text, path):
        return darknet_spec(text, path)
    raw = parse_yaml(text, path)
    if is_ultralytics(raw):
        return ultralytics_spec(raw, path)
    reject_unknown(raw, SPEC_KEYS, path, "")
    fmt = raw.get("format")
    if not isinstance(fmt, str) or fmt not in READERS:
        got = "missing" if fmt is None else f"unknown format {short(fmt)}"
        raise ValueError(f"{path}: format: {got}; expected one of {sorted(READERS)}")
    spec: dict[str, Any] = {
        "path": path,
        "format": fmt,
        "layout": "spec",
        "names": _names(raw, path),
    }
    if fmt == "yolo" and spec["names"] is None:
        raise ValueError(
            f"{path}: names: required for format yolo (a list, or the path of "
            "a dataset YAML with names:)"
        )
    splits = [s for s in SPLITS if s in raw]
    if fmt == "synthetic" and "test" in raw:
        raise ValueError(f"{path}: test: format synthetic makes train and val only")
    if not splits:
        raise ValueError(f"{path}: train: missing (a spec needs train: and/or val:)")
    for split in splits:
        keys = (SPLIT_KEYS[fmt], OPTIONAL_KEYS.get(fmt, ()))
        spec[split] = _split_paths(raw[split], keys, path, split)
    if fmt == "synthetic":
        spec["synthetic"] = _synthetic_params(raw.get("synthetic", {}), path)
    elif "synthetic" in raw:
        raise ValueError(f"{path}: synthetic: only valid with format: synthetic")
    return spec


def load_dataset(
    spec_path: str, split: str, check_images: bool = True, max_pixels: int = MAX_PIXELS
) -> Dataset:
    """The records of one split of the dataset a spec describes.

    Args:
        spec_path: str. Dataset spec YAML.
        split: str. "train", "val" or "test".
        check_images: bool. Open every image once and drop the unusable ones (counted in
            `problems`). Defaults to True.
        max_pixels: int. Images whose header declares more pixels are skipped without
            being decoded (`image_too_large`; `data.max_pixels`). Defaults to `MAX_PIXELS`.
    """
    spec = _load_split(spec_path, split)
    dataset = READERS[spec["format"]](spec, split, max_pixels)
    if check_images and spec["format"] != "tfrecord":  # packed images were checked then
        dataset = check_dataset_images(dataset, max_pixels=max_pixels)
    return _with_names(dataset, spec, split)


def split_overlap(first: Dataset, second: Dataset) -> int:
    """How many images of `first` are also in `second`: the same file (resolved path),
    or the same image id of the one COCO json both read. Packed splits count 0 (their
    records are not read for this)."""
    if getattr(first.records, "packed", False) or getattr(second.records, "packed", False):
        return 0
    paths = {os.path.realpath(r.path) for r in second.records}
    same_json = first.annotation_file is not None and (
        first.annotation_file == second.annotation_file
    )
    ids = set(second.records.image_ids().tolist()) if same_json else set()
    return sum(os.path.realpath(r.path) in paths or r.image_id in ids for r in first.records)


def overlap_warning(first: str, second: str, count: int) -> str:
    """The warning line for `count` images shared by splits `first` and `second`."""
    return (
        f"warning: {count} image(s) of {first} are also in {second} (same file, or same "
        f"image id of one COCO json): the {second} scores will be optimistic"
    )


def _with_names(dataset: Dataset, spec: dict[str, Any], split: str) -> Dataset:
    """COCO data whose spec gives `names:` gets those instead of the json's."""
    names = spec["names"]
    if names is not None and spec["format"] in ("coco", "synthetic"):
        if len(names) != len(dataset.names):
            raise ValueError(
                f"{spec['path']}: names: {len(names)} names given but "
                f"{split} has {len(dataset.names)} classes"
            )
        dataset.names = list(names)
    return dataset


def load_annotations(spec_path: str, split: str) -> Dataset:
    """The split's annotations, to score detections against: like `load_dataset` without
    opening any image; COCO data needs only its json (the images folder may be absent)."""
    spec = _load_split(spec_path, split)
    if spec["format"] == "synthetic":
        _make_synthetic_split(spec, split)
    if spec["format"] in ("coco", "synthetic"):
        dataset = read_coco(_annotation_file(spec, split), spec[split]["images"])
        return _with_names(dataset, spec, split)
    return load_dataset(spec_path, split, check_images=False)  # voc, yolo, tfrecord


def _load_split(spec_path: str, split: str) -> dict[str, Any]:
    """The checked spec, which must describe `split`."""
    spec = load_spec(spec_path)
    if split not in SPLITS:
        raise ValueError(f"{spec['path']}: unknown split {short(split)}; expected one of {SPLITS}")
    if split not in spec:
        raise ValueError(f"{spec['path']}: {split}: missing")
    return spec


def _annotation_file(spec: dict[str, Any], split: str) -> str:
    """The split's `annotations` path, which must exist."""
    path = spec[split]["annotations"]
    if not os.path.isfile(path):
        raise ValueError(f"{spec['path']}: {split}.annotations: file not found: {path}")
    return path


def _read_coco(spec: dict[str, Any], split: str, max_pixels: int = MAX_PIXELS) -> Dataset:
    """COCO reader on a checked split: annotations file and images folder must exist.
    (The json alone is read: `max_pixels` applies when the images are checked.)"""
    annotations, images = _annotation_file(spec, split), spec[split]["images"]
    if not os.path.isdir(images):
        raise ValueError(f"{spec['path']}: {split}.images: folder not found: {images}")
    return read_coco(annotations, images)


def _folder(spec: dict[str, Any], split: str, key: str) -> str:
    """The split's `key` folder, which must exist."""
    path = spec[split][key]
    if not os.path.isdir(path):
        raise ValueError(f"{spec['path']}: {split}.{key}: folder not found: {path}")
    return path


def _read_voc(spec: dict[str, Any], split: str, max_pixels: int = MAX_PIXELS) -> Dataset:
    """VOC reader on a checked split; class names from the spec or from every xml."""
    images, annotations = _folder(spec, split, "images"), _folder(spec, split, "annotations")
    names = spec["names"]
    if names is None:
        folders = [spec[s]["annotations"] for s in SPLITS if s in spec]
        names = voc_class_names([f for f in folders if os.path.isdir(f)])
        if not names:
            raise ValueError(f"{spec['path']}: names: none given and no object in the xml files")
    ids = spec[split].get("ids")
    if ids is not None and not os.path.isfile(ids):
        raise ValueError(f"{spec['path']}: {split}.ids: file not found: {ids}")
    return read_voc(images, annotations, names, ids, max_pixels)


def _read_yolo(spec: dict[str, Any], split: str, max_pixels: int = MAX_PIXELS) -> Dataset:
    """YOLO txt reader on a checked split (`names` is required for this format)."""
    if "sources" in spec[split]:  # an Ultralytics YAML or a darknet obj.data
        where = f"{spec['path']}: {split}"
        return read_list_split(spec[split], spec["names"], where, max_pixels)
    images, labels = _folder(spec, split, "images"), spec[split]["labels"]
    if not os.path.isdir(labels):
        raise ValueError(f"{spec['path']}: {split}.labels: folder not found: {labels}")
    return read_yolo(images, labels, spec["names"], max_pixels)


def _read_synthetic(spec: dict[str, Any], split: str, max_pixels: int = MAX_PIXELS) -> Dataset:
    """Synthetic data is COCO data, made on first use."""
    _make_synthetic_split(spec, split)
    return _read_coco(spec, split)


def _make_synthetic_split(spec: dict[str, Any], split: str) -> None:
    """Generate the split if its json does not exist yet; check an existing one is current."""
    paths, params = spec[split], spec["synthetic"]
    style = Style(**{k: params[k] for k in asdict(Style())})
    wanted = {
        "seed": params["seed"],
        "split": split,
        "num_images": params[f"{split}_images"],
        "size": params["size"],
        **asdict(style),
        "classes": params["classes"],
    }
    if not os.path.isfile(paths["annotations"]):
        write_split(
            paths["images"],
            paths["annotations"],
            split,
            wanted["num_images"],
            params["seed"],
            params["size"],
            params["classes"],
            style,
        )
    with open(paths["annotations"], encoding="utf-8") as f:
        made = json.load(f).get("info", {}).get("synthetic")
    if made != wanted:
        raise ValueError(
            f"{spec['path']}: synthetic: {paths['annotations']} was generated with {made}, "
            f"but the spec asks for {wanted}; delete that file to regenerate the split"
        )


# One reader per format, and the keys each split of that format needs.
# Each takes (checked spec, split, max_pixels).
READERS: dict[str, Callable[[dict[str, Any], str, int], Dataset]] = {
    "coco": _read_coco,
    "voc": _read_voc,
    "yolo": _read_yolo,
    "synthetic": _read_synthetic,
    "tfrecord": lambda spec, split, max_pixels=MAX_PIXELS: load_packed(
        _folder(spec, split, "packed"), split, spec["path"]
    ),
}
SPLIT_KEYS: dict[str, tuple[str, ...]] = {
    "coco": ("images", "annotations"),
    "voc": ("images", "annotations"),
    "yolo": ("images", "labels"),
    "synthetic": ("images", "annotations"),
    "tfrecord": ("packed",),
}
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {"voc": ("ids",)}


def _names(raw: dict[str, Any], path: str) -> list[str] | None:
    """The optional `names:`: a list of class names, or the path of a YAML holding one
    (Ultralytics' dataset YAML: `names:` as a list or an `{index: name}` map)."""
    names = raw.get("names")
    if names is None:
        return None
    if isinstance(names, str):
        names_file = os.path.normpath(os.path.join(spec_folder(path), names))
        if not os.path.isfile(names_file):
            raise ValueError(f"{path}: names: names file not found: {names_file}")
        return class_names(read_yaml(names_file, "names file").get("names"), names_file)
    return class_names(names, path)


def _split_paths(
    raw: Any, keys: tuple[tuple[str, ...], tuple[str, ...]], path: str, split: str
) -> dict[str, str]:
    """A split's required and optional keys, each a path resolved against the spec's
    folder (`spec_folder`)."""
    required, optional = keys
    raw = mapping(raw, path, split)
    reject_unknown(raw, required + optional, path, f"{split}.")
    paths = {}
    for key in required + tuple(k for k in optional if k in raw):
        value = raw.get(key)
        if not isinstance(value, str) or not value:
            got = "missing" if value is None else "expected a path"
            raise ValueError(f"{path}: {split}.{key}: {got}")
        paths[key] = os.path.normpath(os.path.join(spec_folder(path), value))
    return paths


def _synthetic_params(raw: Any, path: str) -> dict[str, Any]:
    """The generator's parameters: `SYNTHETIC_DEFAULTS` updated with the checked `raw`."""
    raw = mapping(raw, path, "synthetic")
    reject_unknown(raw, tuple(SYNTHETIC_DEFAULTS), path, "synthetic.")
    params = {**SYNTHETIC_DEFAULTS, **raw}
    for key, (low, high) in SYNTHETIC_RANGES.items():
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"{path}: synthetic.{key}: expected an integer >= {low}, got {short(value)}"
            )
        if value > high:
            raise ValueError(
                f"{path}: synthetic.{key}: expected at most {high}, got {short(value)}"
            )
    for key, (low, high) in STYLE_RANGES.items():
        value = params[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ValueError(
                f"{path}: synthetic.{key}: expected a number in [{low:g}, {high:g}], "
                f"got {short(value)}"
            )
        params[key] = float(value)
    if params["min_side"] > params["max_side"]:
        raise ValueError(f"{path}: synthetic.min_side: {params['min_side']} > max_side")
    classes = params["classes"]
    if (
        not isinstance(classes, list)
        or not classes
        or not set(classes) <= set(SHAPES)
        or len(set(classes)) != len(classes)
    ):
        raise ValueError(
            f"{path}: synthetic.classes: expected distinct names from {list(SHAPES)}, "
            f"got {short(classes)}"
        )
    return params
