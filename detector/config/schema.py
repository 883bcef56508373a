"""Typed experiment configuration: nested dataclasses, YAML loading, overrides, validation.

The dataclass defaults are the embedded default experiment, `DEFAULT_CONFIG` (the packaged
``detector/config/default.yaml``, which lists them with the reasons; a test keeps the two
equal): a config file says what it changes. Every key: docs/config.md.

A config is one `Config` holding one dataclass per section. `load_config` starts from the
dataclass defaults, merges a YAML file, applies `section.key=value` overrides, then checks
every value's type (driven by the field annotations) and range. Errors are `ValueError`s
naming the dotted key and the offending value.
"""

from __future__ import annotations

import dataclasses
import difflib
import keyword
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml

from detector.config.coerce import convert
from detector.config.rules import PUBLISHED_ANCHORS, check_value
from detector.data.albu import check_pipeline
from detector.data.image_checks import MAX_PIXELS
from detector.utils.atomic import atomic_write_text
from detector.utils.safe_yaml import load_file, load_text, short


@dataclass
class ModelConfig:
    """Network shape. `anchors`: [[w, h], ...] in grid cells, "auto" (k-means on the training
    boxes at start, `num_anchors` clusters), or "voc"/"coco" (resolved to darknet's lists).
    `init_weights`: start from a .keras checkpoint or a darknet .weights / .conv.N file
    (layers matched by name and shape; partial files allowed); "" = random init."""

    variant: str = "tiny"
    width: float = 0.5
    input_size: int = 320
    anchors: list[list[float]] | str = "auto"
    num_anchors: int = 5
    init_weights: str = ""


@dataclass
class DataConfig:
    """Dataset spec path, batching and augmentation. `workers` = -1 means tf.data
    AUTOTUNE. `hue`, `saturation`, `exposure` are darknet's (hue shift as a fraction of the
    colour circle; gains in [1/s, s] and [1/e, e]); `scale` and `translate` are darknet's
    jitter (zoom range; shift as a fraction of the image). `letterbox`: keep the aspect
    ratio and pad (else plain resize, as YOLOv2). `multiscale` = [min, max] input sizes
    (multiples of 32) drawn anew every `multiscale_every` batches, or [] = off.
    `cache_mb`: keep decoded training images in memory when they fit (0 = never).
    `mosaic`: probability that a training example is a mosaic of 4 images (darknet /
    Ultralytics style; record lists only, not packed records). `mixup`: probability that
    an example is blended with a second one (beta(32, 32) ratio, boxes of both kept).
    `max_pixels`: images whose header declares more pixels are skipped without being
    decoded (counted as `image_too_large`); at most Pillow's decompression-bomb limit,
    89 478 485, the default, which prediction and the input pipeline also apply.
    `albumentations`: the user's albumentations stage, run on each finished training
    example (after the warp, mosaic, mixup and colour, at the input size; boxes follow
    spatial transforms, `min_visibility` applies): a list of {name: TransformName,
    **arguments}, or the path of a file written by ``albumentations.save`` (json/yaml);
    [] = off. Checked at load (`detector.data.albu.check_pipeline`)."""

    spec: str = "synthetic"
    batch_size: int = 8
    workers: int = -1
    max_boxes: int = 100
    hflip: float = 0.5
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    translate: float = 0.1
    hue: float = 0.1
    saturation: float = 1.5
    exposure: float = 1.5
    min_visibility: float = 0.3
    letterbox: bool = False
    multiscale: list[int] = field(default_factory=lambda: [256, 384])
    multiscale_every: int = 10
    cache_mb: float = 2048.0
    mosaic: float = 1.0
    mixup: float = 0.0
    max_pixels: int = MAX_PIXELS
    albumentations: list[dict] | str = field(default_factory=list)


@dataclass
class LossConfig:
    """YOLOv2 region-loss scales; `warmup_images` = seen images of prior-matching warm-up;
    `iou_thresh` < 1 also assigns a box to other anchors of its cell above that shape IoU.
    `box`: the coordinate term, "mse" (darknet's) or "ciou" (1 - complete IoU, YOLOv4).
    `xla`: the loss terms compiled by XLA inside the step (see `YoloLoss`).
    `class_weights`: each object's class term times its class's weight: "none", "auto"
    (from the training set's box counts at the start of a run,
    `detector.engine.class_weights`) or one weight > 0 per class (its length is checked
    against the training data's classes when the run starts)."""

    coord_scale: float = 3.0
    object_scale: float = 5.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0
    ignore_thresh: float = 0.6
    rescore: bool = True
    warmup_images: int = 12800
    prior_scale: float = 0.01
    objectness: str = "bce"
    iou_thresh: float = 0.213
    box: str = "mse"
    xla: bool = True
    class_weights: list[float] | str = "none"


@dataclass
class TrainConfig:
    """Optimisation and the run.

    `warmup_epochs`: darknet's burn-in, lr·(step/burn_in)^`warmup_power`. `schedule`:
    cosine (to `final_lr_fraction`·lr), steps (×`step_factor` at each epoch in `steps`)
    or constant. `clip_norm`: gradient clipping by global norm (0 = off). `ema_momentum`:
    exponential moving average of the weights kept by the optimiser and used for
    evaluation and checkpoints (0 = off). `max_minutes`: wall-clock budget (0 = none).
    `patience`: stop after this many evaluations without a better AP (0 = never).
    `precision`: float32 | mixed_bfloat16 | mixed_float16 | auto (bfloat16 on GPUs of
    compute capability >= 8.0 and on CPUs with AMX/AVX512-BF16, float16 on older GPUs,
    else float32; the resolved value is printed at start and is what the run uses).
    `jit_compile`: XLA for the train step, true | false | auto (on with one replica; off
    under a multi-replica strategy, where XLA cannot compile Keras' cross-replica
    optimizer update). `steps_per_execution`: train steps per call of the compiled
    function (batch callbacks, the NaN check among them, run once per call); it must
    divide the steps of an epoch.
    `distribute`: tf.distribute strategy, auto | none | mirrored | multi_worker (auto:
    multi_worker when TF_CONFIG names several workers, mirrored with several GPUs);
    `devices`: the mirrored devices (empty = all GPUs); `data.batch_size` is the global
    batch, split over the replicas; `scale_lr`: multiply `lr` by the number of replicas;
    `sync_batchnorm`: BatchNorm statistics over the global batch instead of each
    replica's part. See docs/distributed.md.
    `freeze`: fine-tuning, the first N convolutions (with their BatchNorm, then in
    inference mode) not trained, or "backbone" (darknet's ImageNet feature extractor:
    18 convolutions of darknet19, 7 of tiny); 0 = none.
    `close_mosaic`: mosaic off for the end of training: the last N epochs when >= 1, or
    the last fraction of the wall-clock budget (`max_minutes`) when < 1; 0 = never.
    `callbacks`: the user's Keras callbacks, each ``"module:Class"`` or
    ``{"class": "module:Class", "args": {keyword: value}}``, imported when the run
    starts (`detector.engine.callbacks.user`).
    `loggers`: experiment trackers, "mlflow" and/or "wandb" (`detector.engine.callbacks.
    trackers`); `mlflow_uri` ("" = MLFLOW_TRACKING_URI or mlflow's default), `project` (the
    experiment / project; "" = the run directory's parent folder, else "detector"),
    `wandb_mode` ("" = WANDB_MODE, else wandb's default).
    """

    epochs: int = 1000
    optimizer: str = "adam"
    lr: float = 0.004
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    warmup_power: float = 4.0
    schedule: str = "cosine"
    final_lr_fraction: float = 0.01
    steps: list[float] = field(default_factory=list)
    step_factor: float = 0.1
    clip_norm: float = 0.0
    ema_momentum: float = 0.0
    max_minutes: float = 12.0
    patience: int = 0
    seed: int = 0
    precision: str = "auto"
    jit_compile: bool | str = "auto"
    steps_per_execution: int = 1
    distribute: str = "auto"
    devices: list[str] = field(default_factory=list)
    scale_lr: bool = False
    sync_batchnorm: bool = False
    freeze: int | str = 0
    close_mosaic: float = 0.1
    callbacks: list[str | dict] = field(default_factory=list)
    loggers: list[str] = field(default_factory=list)
    mlflow_uri: str = ""
    project: str = ""
    wandb_mode: str = ""
    run_dir: str = "runs/default"


@dataclass
class EvalConfig:
    """COCO evaluation during training and in evaluate.py; see `is_eval_epoch`.

    `async_` (YAML key ``eval.async``): evaluate a copy of the weights taken at the epoch
    end (EMA included) in a background thread while training goes on; the same AP picks
    best.keras, and an epoch's row of metrics.csv and TensorBoard is written once its
    evaluation is done (at the latest at the next epoch end). Default false: evaluate at
    the epoch end. See docs/gpu.md.

    `cache_mb`: keep the validation images, decoded and resized (uint8), in memory from
    the first evaluation of a run on, when they fit in this many MB (0 = read them at
    every evaluation); apart from ``data.cache_mb``, the training images' budget.
    """

    every: int = 1
    warmup: int = 0
    score_threshold: float = 0.005
    nms_iou: float = 0.45
    max_detections: int = 100
    batch_size: int = 16
    async_: bool = False
    cache_mb: float = 1024.0

    def is_eval_epoch(self, epoch: int) -> bool:
        """Whether to evaluate after `epoch` (1-based): epochs warmup + every, warmup + 2*every...

        The first `warmup` epochs are never evaluated, so warmup + 1 is the first eligible one.
        """
        return epoch > self.warmup and (epoch - self.warmup) % self.every == 0


@dataclass
class Config:
    """The whole experiment: one dataclass per section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_SECTIONS: dict[str, type] = get_type_hints(Config)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.yaml")


def _yaml_key(field_name: str) -> str:
    """A field's YAML key: the field name, without the ``_`` that a Python keyword needs
    as a field (``async_`` is ``eval.async``)."""
    stem = field_name.removesuffix("_")
    return stem if keyword.iskeyword(stem) else field_name


def _field_name(yaml_key: str) -> str:
    """The dataclass field of a YAML key (the inverse of `_yaml_key`)."""
    return f"{yaml_key}_" if keyword.iskeyword(yaml_key) else yaml_key


_HINTS: dict[str, Any] = {
    f"{name}.{_yaml_key(key)}": hint
    for name, cls in _SECTIONS.items()
    for key, hint in get_type_hints(cls).items()
}


def _describe(value: Any) -> str:
    """`value` for a message, shortened (`detector.utils.safe_yaml.short`), and its type."""
    return f"{short(value)} ({type(value).__name__})"


def _unknown_key(key: str) -> ValueError:
    """Error for an unknown dotted key, naming the closest valid key (or the valid choices)."""
    close = difflib.get_close_matches(key, _HINTS if "." in key else _SECTIONS, n=1)
    section = key.split(".")[0]
    if close:
        hint = f"did you mean {close[0]!r}?"
    elif section in _SECTIONS:
        hint = "valid keys: " + ", ".join(k for k in _HINTS if k.startswith(f"{section}."))
    else:
        hint = "valid sections: " + ", ".join(_SECTIONS)
    return ValueError(f"unknown config key {short(key)} ({hint})")


def _typed(key: str, value: Any) -> Any:
    """Return `value` converted to the annotated type of `key`, or raise a ValueError."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"config key {key!r}: contains a NUL character: {short(value)}")
    try:
        return convert(value, _HINTS[key])
    except (TypeError, OverflowError):  # OverflowError: an int beyond float64 for a float
        hint = _HINTS[key]
        expected = str(hint) if get_args(hint) else hint.__name__
        raise ValueError(
            f"config key {key!r}: expected {expected}, got {_describe(value)}"
        ) from None


def _mapping(value: Any, where: str) -> dict[Any, Any]:
    """Return `value` as a mapping ({} for an empty YAML node), or raise a ValueError."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise ValueError(f"{where}: expected a mapping, got {_describe(value)}")


def _merge(tree: dict[str, dict[str, Any]], updates: Any, source: str) -> None:
    """Merge a parsed YAML mapping {section: {key: value}} into `tree`, rejecting unknown keys."""
    for section, entries in _mapping(updates, source).items():
        if section not in _SECTIONS:
            raise _unknown_key(str(section))
        for key, value in _mapping(entries, f"config section {section!r}").items():
            _assign(tree, f"{section}.{key}", value)


def _assign(tree: dict[str, dict[str, Any]], key: str, value: Any) -> None:
    if key not in _HINTS:
        raise _unknown_key(key)
    section, name = key.split(".")
    tree[section][name] = value


def _parse_override(text: str) -> tuple[str, Any]:
    """Split `section.key=value`; the value is YAML, except that str fields take the text as is
    (so `train.run_dir=2024` is the path "2024", not the integer 2024)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or key.count(".") != 1:
        raise ValueError(f"malformed override {short(text)}: expected section.key=value")
    if key not in _HINTS:
        raise _unknown_key(key)
    if _HINTS[key] is str:
        return key, raw
    return key, load_text(raw, f"override {short(text)}: value")


def _resolve_anchors(model: ModelConfig) -> None:
    """Replace "voc"/"coco" by darknet's anchors; a list of anchors sets num_anchors."""
    if isinstance(model.anchors, str) and model.anchors in PUBLISHED_ANCHORS:
        model.anchors = [list(pair) for pair in PUBLISHED_ANCHORS[model.anchors]]
    if not isinstance(model.anchors, str):
        model.num_anchors = len(model.anchors)


def _build(tree: dict[str, dict[str, Any]]) -> Config:
    """Type-check, construct and value-check a Config from a {section: {key: value}} tree."""
    sections = {
        name: cls(**{_field_name(k): _typed(f"{name}.{k}", v) for k, v in tree[name].items()})
        for name, cls in _SECTIONS.items()
    }
    cfg = Config(**sections)
    for key in _HINTS:
        section, name = key.split(".")
        check_value(key, getattr(getattr(cfg, section), _field_name(name)))
    _check_together(cfg)
    _resolve_anchors(cfg.model)
    return cfg


def _check_together(cfg: Config) -> None:
    """Rules between keys: multi-scale training must include the size evaluation and
    prediction use (``model.input_size``), else the network is scored at a size it never
    trained at (`--set model.input_size=416` over a config with multi-scale 256..384).
    The albumentations stage must build and run at the smallest training size."""
    sizes, size = cfg.data.multiscale, cfg.model.input_size
    if sizes and not sizes[0] <= size <= sizes[1]:
        raise ValueError(
            f"'data.multiscale': {sizes} must include model.input_size {size} (the size "
            f"evaluation uses): set data.multiscale=[min, max] around it, or [] for one size"
        )
    if cfg.data.albumentations:
        smallest = min([size, *sizes])
        check_pipeline(cfg.data.albumentations, smallest, cfg.data.min_visibility)


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Return `cfg` as plain nested dicts {section: {key: value}} (YAML-serialisable)."""
    tree = dataclasses.asdict(cfg)
    return {name: {_yaml_key(k): v for k, v in keys.items()} for name, keys in tree.items()}


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> Config:
    """Load a validated Config.

    Args:
        path: str | None. YAML file of {section: {key: value}} merged over the dataclass
            defaults. Defaults to None (defaults only).
        overrides: Sequence[str]. `section.key=value` strings applied after the file, in
            order; values are parsed as YAML (`train.lr=0.01`, `model.anchors=[[1,2],[3,4]]`),
            str fields take the text as is. Defaults to ().
    """
    tree = config_to_dict(Config())
    if path is not None:
        if not Path(path).is_file():
            raise ValueError(f"config file not found: {path}")
        parsed = load_file(os.fspath(path), "config file")
        _merge(tree, parsed, f"config file {path}")
    for text in overrides:
        _assign(tree, *_parse_override(text))
    return _build(tree)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write `cfg` as YAML atomically (temporary file in the same folder, then rename)."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
