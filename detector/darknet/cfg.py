"""Darknet ``.cfg`` files: parsing, darknet's shape arithmetic, the layer table and BFLOPs.

Pure Python (no Keras): ``read_cfg`` turns a cfg into sections, ``layer_table`` walks them
as darknet's ``parse_network_cfg`` does and gives every layer's output size and cost, and
``RegionSpec`` holds the ``[region]`` options with their mapping onto our loss config.
Darknet numbers its layers from 0, not counting ``[net]``; so do the tables here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields

# Section names darknet accepts for each kind we know (darknet's string_to_layer_type).
KINDS = {
    "net": "net",
    "network": "net",
    "convolutional": "conv",
    "conv": "conv",
    "maxpool": "max",
    "max": "max",
    "route": "route",
    "reorg": "reorg",
    "region": "region",
    "avgpool": "avg",
    "avg": "avg",
    "softmax": "softmax",
    "soft": "softmax",
    "cost": "cost",
}
BUILDABLE = {"conv", "max", "route", "reorg", "region"}
ACTIVATIONS = {"leaky", "linear", "logistic", "relu"}


@dataclass
class Section:
    """One ``[kind]`` block: its options as strings, and where it starts (for messages)."""

    kind: str
    options: dict[str, str]
    line: int
    source: str = "cfg"

    def where(self) -> str:
        return f"{self.source}:{self.line} [{self.kind}]"

    def get_int(self, key: str, default: int) -> int:
        return int(self._number(key, default, int))

    def get_float(self, key: str, default: float) -> float:
        return float(self._number(key, default, float))

    def get_floats(self, key: str) -> list[float]:
        text = self.options.get(key, "")
        try:
            return [float(v) for v in text.split(",") if v]
        except ValueError:
            raise ValueError(f"{self.where()}: {key}={text!r} is not a list of numbers") from None

    def _number(self, key, default, kind):
        if key not in self.options:
            return default
        try:
            return kind(float(self.options[key])) if kind is int else kind(self.options[key])
        except ValueError:
            raise ValueError(
                f"{self.where()}: {key}={self.options[key]!r} is not a number"
            ) from None


def read_cfg(path_or_text: str) -> list[Section]:
    """Parses a darknet cfg (a file path, or the cfg text itself) into sections.

    Darknet strips every whitespace character from a line and skips lines starting with
    ``#`` or ``;``; so does this. The first section must be ``[net]``.

    Raises:
        ValueError: unreadable file, an option outside a section, an unknown section.
    """
    is_path = "\n" not in path_or_text and "[" not in path_or_text
    source = os.path.basename(path_or_text) if is_path else "cfg"
    if is_path:
        if not os.path.isfile(path_or_text):
            raise ValueError(f"cfg file not found: {path_or_text}")
        with open(path_or_text) as f:
            path_or_text = f.read()
    sections: list[Section] = []
    for number, raw in enumerate(path_or_text.splitlines(), 1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            name = line.strip("[]").lower()
            if name not in KINDS:
                raise ValueError(f"{source}:{number}: unsupported section [{name}]")
            sections.append(Section(KINDS[name], {}, number, source))
        elif not sections or "=" not in line:
            raise ValueError(f"{source}:{number}: cannot parse {raw.strip()!r}")
        else:
            key, value = line.split("=", 1)
            sections[-1].options[key] = value
    if not sections or sections[0].kind != "net":
        raise ValueError(f"{source}: the first section must be [net]")
    return sections


@dataclass
class LayerInfo:
    """One row of darknet's layer table. Sizes are (w, h, c) in pixels / channels."""

    index: int
    kind: str
    input: tuple[int, int, int]
    output: tuple[int, int, int]
    filters: int = 0
    size: int = 0
    stride: int = 1
    pad: int = 0
    batch_normalize: bool = False
    activation: str = ""
    sources: list[int] = field(default_factory=list)
    section: Section | None = None

    @property
    def bflops(self) -> float:
        """Darknet's count: 2·K·K·C_in·C_out·H_out·W_out / 1e9 for a conv, else 0."""
        if self.kind != "conv":
            return 0.0
        w, h, _ = self.output
        return 2.0 * self.filters * self.size * self.size * self.input[2] * w * h / 1e9


def net_size(sections: list[Section], input_size: int | None = None) -> tuple[int, int, int]:
    """(w, h, c) of the network input: ``input_size`` square if given, else [net]'s."""
    net = sections[0]
    channels = net.get_int("channels", 3)
    if input_size is not None:
        return int(input_size), int(input_size), channels
    return net.get_int("width", 0), net.get_int("height", 0), channels


def layer_table(sections: list[Section], input_size: int | None = None) -> list[LayerInfo]:
    """Every layer's input and output (w, h, c), as darknet computes them.

    Args:
        sections: from ``read_cfg``.
        input_size: int or None. Square input side in pixels; None = [net] width/height.

    Raises:
        ValueError: an option we do not support, or sizes that do not fit together.
    """
    size = net_size(sections, input_size)
    if min(size) <= 0:
        raise ValueError(f"{sections[0].where()}: width, height and channels must be > 0")
    rows: list[LayerInfo] = []
    for index, section in enumerate(sections[1:]):
        previous = rows[-1].output if rows else size
        rows.append(_layer(index, section, previous, rows))
    return rows


def _layer(index: int, s: Section, previous, rows) -> LayerInfo:
    w, h, c = previous
    if s.kind == "conv":
        return _conv(index, s, previous)
    if s.kind == "max":
        stride = s.get_int("stride", 1)
        size = s.get_int("size", stride)
        padding = s.get_int("padding", size - 1)
        if padding != size - 1 or (stride > 1 and size > 2) or size < 1 or stride < 1:
            raise ValueError(
                f"{s.where()}: only size-2 or stride-1 max-pools with darknet's "
                f"default padding are supported (size={size}, stride={stride})"
            )
        out = ((w + padding - size) // stride + 1, (h + padding - size) // stride + 1, c)
        return LayerInfo(index, "max", previous, out, size=size, stride=stride, section=s)
    if s.kind == "route":
        return _route(index, s, rows)
    if s.kind == "reorg":
        stride = s.get_int("stride", 1)
        for flag in ("reverse", "flatten", "extra"):
            if s.get_int(flag, 0):
                raise ValueError(f"{s.where()}: {flag}= is not supported")
        if c % (stride * stride) or w % stride or h % stride:
            raise ValueError(f"{s.where()}: input {w}x{h}x{c} does not divide by stride {stride}")
        out = (w // stride, h // stride, c * stride * stride)
        return LayerInfo(index, "reorg", previous, out, stride=stride, section=s)
    if s.kind == "region":
        region = RegionSpec.from_section(s)
        if c != region.num * (region.coords + 1 + region.classes):
            raise ValueError(
                f"{s.where()}: num·(coords + 1 + classes) = "
                f"{region.num * (region.coords + 1 + region.classes)} but the "
                f"previous layer has {c} channels"
            )
        return LayerInfo(index, "region", previous, previous, section=s)
    if s.kind == "avg":
        return LayerInfo(index, "avg", previous, (1, 1, c), section=s)
    if s.kind in ("softmax", "cost"):
        return LayerInfo(index, s.kind, previous, previous, section=s)
    raise ValueError(f"{s.where()}: [{s.kind}] may only come first")


def _conv(index: int, s: Section, previous) -> LayerInfo:
    w, h, _ = previous
    filters, size, stride = s.get_int("filters", 1), s.get_int("size", 1), s.get_int("stride", 1)
    pad = size // 2 if s.get_int("pad", 0) else s.get_int("padding", 0)
    activation = s.options.get("activation", "logistic")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"{s.where()}: activation={activation} is not supported "
            f"(supported: {sorted(ACTIVATIONS)})"
        )
    for key, default in (("groups", 1), ("binary", 0), ("xnor", 0)):
        if s.get_int(key, default) != default:
            raise ValueError(f"{s.where()}: {key}={s.options[key]} is not supported")
    if min(filters, size, stride) < 1:
        raise ValueError(f"{s.where()}: filters, size and stride must be >= 1")
    out_w, out_h = (w + 2 * pad - size) // stride + 1, (h + 2 * pad - size) // stride + 1
    if min(out_w, out_h) < 1:
        raise ValueError(f"{s.where()}: input {w}x{h} is too small for size {size}")
    return LayerInfo(
        index,
        "conv",
        previous,
        (out_w, out_h, filters),
        filters,
        size,
        stride,
        pad,
        bool(s.get_int("batch_normalize", 0)),
        activation,
        section=s,
    )


def _route(index: int, s: Section, rows: list[LayerInfo]) -> LayerInfo:
    try:
        refs = [int(v) for v in s.options.get("layers", "").split(",") if v]
    except ValueError:
        raise ValueError(
            f"{s.where()}: layers={s.options.get('layers')!r} is not a list of integers"
        ) from None
    sources = [index + r if r < 0 else r for r in refs]
    if not sources or any(not 0 <= i < index for i in sources):
        raise ValueError(
            f"{s.where()}: layers={s.options.get('layers')} must name earlier "
            f"layers (this is layer {index})"
        )
    shapes = [rows[i].output for i in sources]
    if len({shape[:2] for shape in shapes}) != 1:
        raise ValueError(f"{s.where()}: routed layers {sources} have different sizes {shapes}")
    out = (*shapes[0][:2], sum(shape[2] for shape in shapes))
    return LayerInfo(index, "route", rows[index - 1].output, out, sources=sources, section=s)


def total_bflops(rows: list[LayerInfo]) -> float:
    """Sum of the convolutions' BFLOPs (darknet counts nothing else)."""
    return sum(row.bflops for row in rows)


def format_table(rows: list[LayerInfo]) -> str:
    """The layer table in darknet's layout, with a total BFLOPs line at the end."""
    lines = ["layer     filters    size              input                output"]
    for r in rows:
        shapes = "{:4d} x{:4d} x{:4d}   ->  {:4d} x{:4d} x{:4d}".format(*r.input, *r.output)
        if r.kind == "conv":
            text = f"conv  {r.filters:5d} {r.size:2d} x{r.size:2d} /{r.stride:2d}  {shapes}"
            text += f"  {r.bflops:5.3f} BFLOPs"
        elif r.kind == "max":
            text = f"max          {r.size} x {r.size} / {r.stride}  {shapes}"
        elif r.kind == "reorg":
            text = f"reorg              /{r.stride:2d}  {shapes}"
        elif r.kind == "route":
            text = "route " + " ".join(f"{i:2d}" for i in r.sources)
            text = f"{text:<37}->  " + "{:4d} x{:4d} x{:4d}".format(*r.output)
        elif r.kind == "region":
            text = "detection"
        else:
            text = f"{r.kind:<19}{shapes}"
        lines.append(f"{r.index:5d} {text}")
    lines.append(f"Total BFLOPs {total_bflops(rows):.3f}")
    return "\n".join(lines)


@dataclass
class RegionSpec:
    """The ``[region]`` options, with darknet's defaults (parse_region).

    ``anchors`` are (w, h) pairs in grid cells (stride-32 units), as our YoloHead wants.
    """

    anchors: list[list[float]]
    classes: int
    num: int
    coords: int = 4
    softmax: bool = False
    thresh: float = 0.5
    object_scale: float = 1.0
    noobject_scale: float = 1.0
    class_scale: float = 1.0
    coord_scale: float = 1.0
    rescore: bool = False
    bias_match: bool = False
    jitter: float = 0.2
    random: bool = False
    absolute: bool = False

    @classmethod
    def from_section(cls, s: Section) -> RegionSpec:
        num, classes = s.get_int("num", 1), s.get_int("classes", 20)
        values = s.get_floats("anchors") or [0.5] * (2 * num)
        if len(values) != 2 * num:
            raise ValueError(
                f"{s.where()}: {len(values)} anchor values for num={num} (expected {2 * num})"
            )
        read = {
            "bool": lambda k, d: bool(s.get_float(k, d)),
            "int": s.get_int,
            "float": s.get_float,
        }
        options = {f.name: read[f.type](f.name, f.default) for f in fields(cls)[3:]}
        spec = cls(
            [[values[2 * i], values[2 * i + 1]] for i in range(num)], classes, num, **options
        )
        if spec.coords != 4 or "tree" in s.options or "map" in s.options:
            raise ValueError(f"{s.where()}: only coords=4 without tree/map is supported")
        if not spec.softmax:
            raise ValueError(
                f"{s.where()}: softmax=0 is not supported (our decoder applies "
                f"softmax to the class logits, as darknet does with softmax=1)"
            )
        return spec

    def loss_config(self) -> dict:
        """This region's training settings under our ``loss`` config keys.

        Darknet's warm-up (12 800 seen images, prior pull scaled by .01), its MSE
        objectness and single-anchor matching are fixed in its code; they are given
        here so the dict is the whole of darknet's loss.
        """
        return {
            "coord_scale": self.coord_scale,
            "object_scale": self.object_scale,
            "noobject_scale": self.noobject_scale,
            "class_scale": self.class_scale,
            "ignore_thresh": self.thresh,
            "rescore": self.rescore,
            "warmup_images": 12800,
            "prior_scale": 0.01,
            "objectness": "mse",
            "iou_thresh": 1.0,
        }


def region_spec(sections: list[Section]) -> RegionSpec | None:
    """The cfg's ``[region]`` (the last one), or None for a cfg without one."""
    regions = [s for s in sections if s.kind == "region"]
    return RegionSpec.from_section(regions[-1]) if regions else None


def region_loss_config(path_or_text: str) -> dict:
    """``[region]``'s loss settings as ``loss.*`` config values (see RegionSpec.loss_config).

    Raises:
        ValueError: the cfg has no ``[region]``.
    """
    spec = region_spec(read_cfg(path_or_text))
    if spec is None:
        raise ValueError("the cfg has no [region] section")
    return spec.loss_config()


def region_notes(spec: RegionSpec) -> list[str]:
    """Notes on the region options our loss cannot follow (empty when it follows all)."""
    notes = []
    if not spec.bias_match:
        notes.append("bias_match=0: darknet matches by predicted box; our loss by anchor shape")
    if spec.random:
        notes.append("random=1: darknet's multi-scale; set data.multiscale to follow it")
    if not math.isclose(spec.jitter, 0.0):
        notes.append(f"jitter={spec.jitter}: darknet's crop jitter; see data.scale/translate")
    return notes
