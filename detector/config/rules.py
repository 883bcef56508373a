"""The config's value rules: what each key accepts, with the phrase its error message uses.

`check_value` is called for every key a config file or ``--set`` gives (`detector.config.schema`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from detector.data.image_checks import MAX_PIXELS
from detector.utils.safe_yaml import short

# Darknet's published YOLOv2 anchors as its cfg files write them (yolov2-voc.cfg,
# yolov2.cfg): w,h pairs in 13x13 grid cells.
_DARKNET_ANCHORS = {
    "voc": "1.3221,1.73145, 3.19275,4.00944, 5.05587,8.09892, 9.47112,4.84053, 11.2364,10.0071",
    "coco": "0.57273,0.677385, 1.87446,2.06253, 3.33843,5.47434, 7.88282,3.52778, 9.77052,9.16828",
}
PUBLISHED_ANCHORS: dict[str, tuple[tuple[float, float], ...]] = {
    name: tuple((float(w), float(h)) for w, h in (pair.split(",") for pair in text.split(", ")))
    for name, text in _DARKNET_ANCHORS.items()
}


def _is_range(v: list[float], step: int = 0) -> bool:
    return len(v) == 2 and 0 < v[0] <= v[1] and all(x % step == 0 for x in v if step)


def _is_anchor_list(v: list[list[float]]) -> bool:
    return bool(v) and all(len(pair) == 2 and min(pair) > 0 for pair in v)


def _is_class_path(v: Any) -> bool:
    """``module:Class`` (dotted module, attribute), as ``train.callbacks`` names a class."""
    module, sep, name = v.partition(":") if isinstance(v, str) else ("", "", "")
    parts = [*module.split("."), name]
    return bool(sep) and all(part.isidentifier() for part in parts)


def _is_callback_entry(v: Any) -> bool:
    if not isinstance(v, dict):
        return _is_class_path(v)
    args = v.get("args", {})
    return (
        set(v) <= {"class", "args"}
        and _is_class_path(v.get("class"))
        and (args is None or (isinstance(args, dict) and all(isinstance(k, str) for k in args)))
    )


# the experiment trackers of train.loggers (detector.engine.callbacks.trackers)
LOGGERS = ("mlflow", "wandb")

Rule = tuple[Callable[[Any], bool], str]


def _one_of(*choices: str) -> Rule:
    return (lambda v: v in choices), f"one of {list(choices)}"


RULES: dict[str, Rule] = {
    "model.variant": _one_of("darknet19", "tiny"),
    "model.anchors": (
        (lambda v: v in ("auto", *PUBLISHED_ANCHORS) if isinstance(v, str) else _is_anchor_list(v)),
        f"one of {['auto', *PUBLISHED_ANCHORS]} or a non-empty list of [w, h] > 0 (grid cells)",
    ),
    "train.optimizer": _one_of("adam", "sgd", "adamw"),
    "loss.objectness": _one_of("mse", "bce"),
    "loss.box": _one_of("mse", "ciou"),
    "loss.class_weights": (
        (lambda v: v in ("none", "auto") if isinstance(v, str) else bool(v) and min(v) > 0),
        "'none', 'auto' or a list of one weight > 0 per class",
    ),
    "train.precision": _one_of("auto", "float32", "mixed_float16", "mixed_bfloat16"),
    "train.jit_compile": ((lambda v: v in (True, False, "auto")), "true, false or auto"),
    "train.schedule": _one_of("cosine", "steps", "constant"),
    "train.distribute": _one_of("auto", "none", "mirrored", "multi_worker"),
    "train.steps": ((lambda v: all(x > 0 for x in v)), "a list of epochs > 0"),
    "train.ema_momentum": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "train.step_factor": ((lambda v: v > 0), "> 0"),
    **dict.fromkeys(("model.width", "train.lr"), ((lambda v: v > 0), "> 0")),
    "model.input_size": ((lambda v: v > 0 and v % 32 == 0), "a positive multiple of 32"),
    "data.workers": ((lambda v: v == -1 or v >= 1), "-1 (AUTOTUNE) or >= 1"),
    "data.max_pixels": ((lambda v: 1 <= v <= MAX_PIXELS), f"in [1, {MAX_PIXELS}]"),
    "data.scale": (_is_range, "[min, max] with 0 < min <= max"),
    "data.multiscale": ((lambda v: not v or _is_range(v, 32)), "[] or [min, max] multiples of 32"),
    "data.hue": ((lambda v: 0 <= v <= 0.5), "in [0, 0.5]"),
    **dict.fromkeys(("data.saturation", "data.exposure"), ((lambda v: v >= 1), ">= 1")),
    "train.run_dir": ((lambda v: v != ""), "a non-empty path"),
    "data.albumentations": (
        (lambda v: v != ""),
        "a list of {name: TransformName, ...arguments} or the path of an albumentations.save file",
    ),
    "train.callbacks": (
        (lambda v: all(_is_callback_entry(entry) for entry in v)),
        "a list of 'module:Class' or {class: 'module:Class', args: {name: value}}",
    ),
    "train.loggers": (
        (lambda v: len(set(v)) == len(v) and set(v) <= set(LOGGERS)),
        f"a list of distinct names among {list(LOGGERS)}",
    ),
    "train.wandb_mode": _one_of("", "online", "offline", "disabled"),
    "train.freeze": (
        (lambda v: v == "backbone" or (isinstance(v, int) and v >= 0)),
        "an int >= 0 or 'backbone'",
    ),
    **dict.fromkeys(
        (
            "model.num_anchors data.batch_size data.max_boxes train.epochs "
            "train.steps_per_execution "
            "data.multiscale_every eval.every eval.max_detections eval.batch_size"
        ).split(),
        ((lambda v: v >= 1), ">= 1"),
    ),
    **dict.fromkeys(
        (
            "loss.coord_scale loss.object_scale loss.noobject_scale loss.class_scale "
            "loss.warmup_images loss.prior_scale train.weight_decay train.warmup_epochs "
            "train.max_minutes eval.warmup train.clip_norm train.patience data.cache_mb "
            "eval.cache_mb "
            "train.warmup_power train.seed train.close_mosaic"
        ).split(),
        ((lambda v: v >= 0), ">= 0"),
    ),
    **dict.fromkeys(
        (
            "data.hflip data.translate data.min_visibility loss.ignore_thresh data.mosaic "
            "data.mixup "
            "loss.iou_thresh train.momentum train.final_lr_fraction eval.score_threshold "
            "eval.nms_iou"
        ).split(),
        ((lambda v: 0 <= v <= 1), "in [0, 1]"),
    ),
}


def check_value(key: str, value: Any) -> None:
    """Raise a ValueError naming `key` and `value` if the value breaks the key's rule."""
    if key in RULES and not RULES[key][0](value):
        raise ValueError(f"config key {key!r}: must be {RULES[key][1]}, got {short(value)}")
