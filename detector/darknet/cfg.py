"""Darknet ``.cfg`` files: parsing, darknet's shape arithmetic, the layer table and BFLOPs.

Pure Python (no Keras): ``read_cfg`` turns a cfg into sections, ``layer_table`` walks them
as darknet's ``parse_network_cfg`` does and gives every layer's output size and cost, and
``detector.darknet.region`` reads the ``[region]`` options.
Darknet numbers its layers from 0, not counting ``[net]``; so do the tables here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from detector.darknet import limits
from detector.darknet.region import RegionSpec, region_spec
from detector.darknet.section import Section
from detector.utils.safe_yaml import short

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
        path_or_text = limits.read_cfg_text(path_or_text)
    sections: list[Section] = []
    for number, raw in enumerate(path_or_text.splitlines(), 1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            name = line.strip("[]").lower()
            if name not in KINDS:
                raise ValueError(f"{source}:{number}: unsupported section [{name[:40]}]")
            sections.append(Section(KINDS[name], {}, number, source, len(sections)))
        elif not sections or "=" not in line:
            raise ValueError(f"{source}:{number}: cannot parse {short(raw.strip())}")
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
        side = limits.check_int("--input-size", "net", "width", int(input_size))
        return side, side, channels
    return net.get_int("width", 1), net.get_int("height", 1), channels


def layer_table(sections: list[Section], input_size: int | None = None) -> list[LayerInfo]:
    """Every layer's input and output (w, h, c), as darknet computes them.

    Args:
        sections: from ``read_cfg``.
        input_size: int or None. Square input side in pixels; None = [net] width/height.

    Raises:
        ValueError: an option we do not support, or sizes that do not fit together.
    """
    size = net_size(sections, input_size)
    limits.check_output(sections[0].where(), size)
    rows: list[LayerInfo] = []
    params = 0
    for index, section in enumerate(sections[1:]):
        previous = rows[-1].output if rows else size
        row = _layer(index, section, previous, rows)
        limits.check_output(section.where(), row.output)
        if row.kind == "conv":
            params += limits.check_conv(section.where(), row.size, row.input[2], row.filters)
        rows.append(row)
    limits.check_total(sections[0].source, params)
    return rows


def _layer(index: int, s: Section, previous, rows) -> LayerInfo:
    w, h, c = previous
    if s.kind == "conv":
        return _conv(index, s, previous)
    if s.kind == "max":
        stride = s.get_int("stride", 1)
        size = s.get_int("size", stride)
        padding = s.get_int("padding", size - 1)
        if padding != size - 1 or (stride > 1 and size > 2):
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
    limits.check_conv(s.where(), size, previous[2], filters)  # before any other arithmetic
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
            f"{s.where()}: layers={short(s.options.get('layers'))} is not a list of integers"
        ) from None
    sources = [index + r if r < 0 else r for r in refs]
    if not sources or len(sources) > 64 or any(not 0 <= i < index for i in sources):
        raise ValueError(
            f"{s.where()}: layers={short(s.options.get('layers'))} must name earlier "
            f"layers, 1 to 64 of them (this is layer {index})"
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


def region_loss_config(path_or_text: str) -> dict:
    """``[region]``'s loss settings as ``loss.*`` config values (see RegionSpec.loss_config).

    Raises:
        ValueError: the cfg has no ``[region]``.
    """
    spec = region_spec(read_cfg(path_or_text))
    if spec is None:
        raise ValueError("the cfg has no [region] section")
    return spec.loss_config()
