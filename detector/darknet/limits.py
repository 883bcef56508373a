"""Bounds on the numbers of a darknet cfg, checked before anything is allocated.

A cfg is a file a user hands over: ``filters=99999999`` or ``width=10000000`` would make
Keras try to allocate gigabytes (or the weights reader read them) before failing. Every
number is range-checked as the layer table is walked (`detector.darknet.cfg.layer_table`),
and every layer's parameter count and output size are capped, so a cfg that passes can be
built. The caps are far above any published YOLO / Darknet network: YOLOv2's largest conv
has 11.8 M weights, its largest feature map (608 px) 11.8 M values, 50.7 M parameters in all.
"""

from __future__ import annotations

import os

MAX_CFG_BYTES = 1_000_000  # yolov2.cfg is 2.7 KB; yolo9000.cfg 4 KB
MAX_SIDE = 8_192  # [net] width / height, pixels
MAX_CHANNELS = 64  # [net] channels
MAX_LAYER_PARAMS = 64 * 2**20  # one conv's size·size·in·out weights (256 MB in float32)
MAX_FEATURE_VALUES = 2**29  # one layer's output w·h·c for one image (2 GB): 4096 px x 32
MAX_TOTAL_PARAMS = 512 * 2**20  # all convs' weights (2 GB in float32)

# (low, high) of each integer option darknet reads, by section kind.
INT_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "net": {"width": (1, MAX_SIDE), "height": (1, MAX_SIDE), "channels": (1, MAX_CHANNELS)},
    "conv": {
        "filters": (1, 65_536),
        "size": (1, 64),
        "stride": (1, 64),
        "pad": (0, 64),  # a flag: darknet pads size/2 when it is not 0
        "padding": (0, 64),
        "groups": (1, 65_536),
    },
    "max": {"size": (1, 64), "stride": (1, 64), "padding": (0, 64)},
    "reorg": {"stride": (1, 64)},
    "region": {"classes": (1, 100_000), "num": (1, 1_000), "coords": (1, 64)},
}


def read_cfg_text(path: str) -> str:
    """The cfg file's text, refused unread over `MAX_CFG_BYTES`; errors name it."""
    if not os.path.isfile(path):
        raise ValueError(f"cfg file not found: {path}")
    size = os.path.getsize(path)
    if size > MAX_CFG_BYTES:
        raise ValueError(f"{path}: {size} bytes is too large for a cfg (at most {MAX_CFG_BYTES})")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the cfg ({e.__class__.__name__})") from None


def check_int(where: str, kind: str, key: str, value: int) -> int:
    """`value` if it is in `INT_RANGES[kind][key]` (or that key has no range).

    Raises:
        ValueError: starting with `where` (file, line, section), naming `key` and the range.
    """
    low, high = INT_RANGES.get(kind, {}).get(key, (None, None))
    if low is not None and not low <= value <= high:
        raise ValueError(f"{where}: {key}={value} is outside [{low}, {high}]")
    return value


def check_output(where: str, output: tuple[int, int, int]) -> None:
    """Refuses a layer whose output (w, h, c) holds more than `MAX_FEATURE_VALUES`."""
    w, h, c = output
    if w * h * c > MAX_FEATURE_VALUES:
        raise ValueError(
            f"{where}: output {w}x{h}x{c} = {w * h * c} values per image is over the "
            f"limit of {MAX_FEATURE_VALUES}"
        )


def check_conv(where: str, size: int, channels: int, filters: int) -> int:
    """A conv's weight count size·size·channels·filters, refused over `MAX_LAYER_PARAMS`.

    Raises:
        ValueError: naming `filters` (the key that makes a layer big) and both numbers.
    """
    params = size * size * channels * filters
    if params > MAX_LAYER_PARAMS:
        raise ValueError(
            f"{where}: filters={filters}: {size}x{size} kernel x {channels} in x {filters} "
            f"out = {params} weights, over the limit of {MAX_LAYER_PARAMS} per layer"
        )
    return params


def check_total(source: str, params: int) -> None:
    """Refuses a network whose convs hold more than `MAX_TOTAL_PARAMS` weights in all."""
    if params > MAX_TOTAL_PARAMS:
        raise ValueError(
            f"{source}: the convs hold {params} weights in all, over the limit of "
            f"{MAX_TOTAL_PARAMS}"
        )
