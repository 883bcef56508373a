"""The users' albumentations stage (``data.albumentations``): their transforms, run on the
finished training example (after the warp, mosaic, mixup and colour jitter, at the
network input size, so its cost is per output pixel), before the targets are encoded.

A pipeline is given as a list of ``{name: TransformName, **arguments}`` (a composition
such as ``OneOf`` takes its ``transforms`` as such a list too) or as the path of a file
written by ``albumentations.save`` (json, or yaml by its extension). Boxes go through
albumentations' bounding-box machinery (xyxy pixels, ``pascal_voc``): spatial transforms
move them, those with less than ``min_visibility`` of their area left, or a side under
`MIN_BOX_SIDE`, are dropped with their classes; a pipeline of pixel-only transforms
leaves them as they are, without that machinery's cost.

Determinism: a Compose holds random state and per-call parameters, so each loading thread
builds its own (thread-local); before every example its random state is set from one
draw of the example's own Generator (the pipeline's (seed, stream position) one), so an
example's bytes depend on neither the thread nor the number of threads.
"""

from __future__ import annotations

import difflib
import inspect
import os
import random
import sys
import threading
from typing import Any

import cv2
import numpy as np

from detector.data.augment import MIN_BOX_SIDE
from detector.utils.safe_yaml import short

KEY = "data.albumentations"


def _albumentations():
    """The albumentations module, imported on first use (only when a stage is configured).

    Its import checks PyPI for a newer release (a network request with a 2 s timeout, in
    every process: each worker of a distributed run) unless NO_ALBUMENTATIONS_UPDATE is set:
    a training job must not call out, so the variable is set for the import only and
    restored after it (the environment is the entry points', STYLE.md).
    """
    if "albumentations" in sys.modules:
        return sys.modules["albumentations"]
    before = os.environ.get("NO_ALBUMENTATIONS_UPDATE")
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1" if before is None else before
    try:
        import albumentations
    finally:
        if before is None:
            del os.environ["NO_ALBUMENTATIONS_UPDATE"]
    return albumentations


def transform_names() -> dict[str, type]:
    """{name: class} of the transforms and compositions a pipeline may name."""
    A = _albumentations()
    from albumentations.core.composition import BaseCompose
    from albumentations.core.transforms_interface import BasicTransform

    found = {}
    for name, cls in vars(A).items():
        if not inspect.isclass(cls) or not issubclass(cls, BasicTransform | BaseCompose):
            continue
        if cls.__module__.endswith("transforms_interface") or name.startswith("Base"):
            continue  # the abstract interfaces
        if name not in ("Compose", "ReplayCompose"):
            found[name] = cls
    return found


def _one_line(error: BaseException) -> str:
    """An albumentations / pydantic error as one short line."""
    for cause in (error, error.__cause__):  # albumentations re-raises pydantic's errors
        errors = getattr(cause, "errors", None)
        if callable(errors):  # pydantic's ValidationError: each field and its message
            found = {f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors()}
            return "; ".join(sorted(found))
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _build_one(item: Any, where: str, names: dict[str, type]):
    """The transform of one ``{name: ..., **arguments}`` entry, or a ValueError naming
    `where` (``data.albumentations[i]``)."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ValueError(
            f"{where}: expected {{name: TransformName, ...its arguments}}, got {short(item)}"
        )
    args = {k: v for k, v in item.items() if k != "name"}
    cls = names.get(item["name"])
    if cls is None:
        close = difflib.get_close_matches(item["name"], names, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else "see albumentations' transform list"
        raise ValueError(f"{where}: unknown albumentations transform {item['name']!r} ({hint})")
    if "transforms" in args:  # a composition: OneOf, SomeOf, Sequential...
        if not isinstance(args["transforms"], list):
            raise ValueError(f"{where}.transforms: expected a list of transforms")
        args["transforms"] = [
            _build_one(child, f"{where}.transforms[{k}]", names)
            for k, child in enumerate(args["transforms"])
        ]
    _check_arguments(cls, args, where)
    try:
        return cls(**args)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {item['name']}: bad arguments: {_one_line(error)}") from None


def _check_arguments(cls: type, args: dict, where: str) -> None:
    """ValueError naming an argument `cls` does not take (albumentations only warns)."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for arg in args:
        if arg not in params:
            close = difflib.get_close_matches(arg, params, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"it takes {', '.join(params)}"
            raise ValueError(f"{where}: {cls.__name__}: unknown argument {arg!r} ({hint})")


def _load_file(path: str):
    """The transforms of a file written by ``albumentations.save``."""
    A = _albumentations()
    if not os.path.isfile(path):
        raise ValueError(f"{KEY}: file not found: {path}")
    fmt = "yaml" if path.lower().endswith((".yaml", ".yml")) else "json"
    try:
        loaded = A.load(path, data_format=fmt)
    except Exception as error:  # noqa: BLE001 (json/yaml/registry/pydantic errors alike)
        problem = _one_line(error)
        raise ValueError(f"{KEY}: {path}: not an albumentations pipeline: {problem}") from None
    return list(loaded.transforms) if isinstance(loaded, A.Compose) else [loaded]


def make_transforms(pipeline: list | str) -> list:
    """The albumentations transforms of a ``data.albumentations`` value.

    Raises:
        ValueError: one line naming the entry (``data.albumentations[i]``) or the file:
            an unknown transform name (with the closest valid one), bad arguments, a
            missing or unreadable file.
    """
    if isinstance(pipeline, str):
        return _load_file(pipeline)
    names = transform_names()
    return [_build_one(item, f"{KEY}[{i}]", names) for i, item in enumerate(pipeline)]


def moves_boxes(transforms: list) -> bool:
    """Whether any of `transforms` (compositions searched) is spatial, i.e. not pixel-only."""
    from albumentations.core.transforms_interface import ImageOnlyTransform

    for t in transforms:
        inner = getattr(t, "transforms", None)  # a composition's own transforms
        if moves_boxes(list(inner)) if inner is not None else not isinstance(t, ImageOnlyTransform):
            return True
    return False


def make_compose(transforms: list, min_visibility: float):
    """A Compose of `transforms`, bbox-aware (boxes xyxy pixels, labels ``classes``) when
    one of them is spatial. Boxes are checked once, after the last transform (albumentations'
    check after each one cost ~0.4 ms an image at 416 px, more than a light set itself);
    a pixel-only pipeline leaves the boxes alone (no bbox processing at all)."""
    A = _albumentations()
    if not moves_boxes(transforms):
        return A.Compose(transforms)
    params = A.BboxParams(
        format="pascal_voc",
        label_fields=["classes"],
        min_visibility=min_visibility,
        min_width=MIN_BOX_SIDE,
        min_height=MIN_BOX_SIDE,
        check_each_transform=False,
        clip=True,
    )
    return A.Compose(transforms, bbox_params=params)


def check_pipeline(pipeline: list | str, size: int, min_visibility: float) -> None:
    """ValueError (one line naming the entry) unless `pipeline` builds, accepts boxes and
    keeps a (size, size, 3) uint8 image with each transform applied (probability 1)."""
    if not pipeline:
        return
    transforms = make_transforms(pipeline)
    try:
        make_compose(transforms, min_visibility)
    except (TypeError, ValueError, NotImplementedError) as error:
        raise ValueError(f"{KEY}: {_one_line(error)}") from None
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    boxes = np.array([[size / 4, size / 4, 3 * size / 4, 3 * size / 4]], np.float32)
    for i, transform in enumerate(transforms):
        where = f"{KEY}[{i}]" if isinstance(pipeline, list) else f"{KEY} ({pipeline}) [{i}]"
        compose = make_compose([transform], min_visibility)
        compose.set_random_seed(0)
        transform.p = 1.0
        try:
            out = compose(image=image, bboxes=boxes, classes=np.zeros(1, np.int32))["image"]
        except Exception as error:  # noqa: BLE001 (whatever the transform raises)
            problem = _one_line(error)
            raise ValueError(f"{where}: fails on a {size}x{size} image: {problem}") from None
        if out.dtype != np.uint8 or out.shape[2:] != (3,):
            raise ValueError(
                f"{where}: {type(transform).__name__} returns {out.dtype} images of shape "
                f"{out.shape}; the stage must keep uint8 RGB"
            )


class AlbumentationsStage:
    """The user's transforms on a finished example, bbox-aware, deterministic per example.

    Args:
        pipeline: list of {name, **arguments} or str (a file of ``albumentations.save``).
        min_visibility: float. Share of a box's area that must stay in the image.
    """

    def __init__(self, pipeline: list | str, min_visibility: float):
        self.pipeline, self.min_visibility = pipeline, min_visibility
        make_transforms(pipeline)  # refused here rather than in a loading thread
        self._local = threading.local()

    def compose(self):
        """This thread's Compose (built on first use)."""
        compose = getattr(self._local, "compose", None)
        if compose is None:
            compose = make_compose(make_transforms(self.pipeline), self.min_visibility)
            self._local.compose = compose
        return compose

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`image` uint8 (S, S, 3), `boxes` (N, 4) xyxy pixels, `classes` (N,) through the
        transforms, their randomness one draw of `rng`. Returns the same kinds; a
        transform that changes the size is resized back to (S, S), boxes along."""
        compose, size = self.compose(), image.shape[:2]
        seed = int(rng.integers(2**63))
        # one stream shared by every transform, consumed in order (Compose's own
        # set_random_seed gives each transform the same seed: equal-p transforms together)
        compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        classes = np.asarray(classes, np.int32).reshape(-1)
        if "bboxes" not in compose.processors:  # pixel-only: the boxes stay as they are
            return compose(image=image)["image"], boxes, classes
        out = compose(image=image, bboxes=boxes, classes=classes)
        image, boxes = out["image"], np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        if image.shape[:2] != size:  # a crop or resize: back to the batch's size
            gain = np.array([size[1] / image.shape[1], size[0] / image.shape[0]] * 2)
            image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
            boxes = (boxes * gain).astype(np.float32)
        return image, boxes, np.asarray(out["classes"], np.int32).reshape(-1)


def build_stage(pipeline: list | str, *, min_visibility: float) -> AlbumentationsStage | None:
    """The stage of a ``data.albumentations`` value, or None when it is empty (off: the
    examples are then exactly what they are without this module, no draw taken)."""
    return AlbumentationsStage(pipeline, min_visibility) if pipeline else None
