"""Darknet's ``.weights`` file format: reader and writer (numpy only, little-endian float32).

Layout (darknet's ``load_weights_upto`` / ``save_weights_upto``):

- header: int32 major, minor, revision; then ``seen`` (images trained on) as int64 when
  ``major·10 + minor >= 2`` (and both < 1000), else int32. The original YOLOv2
  ``yolo.weights`` is 0.1.0 with a 4-byte ``seen``; reading 8 bytes there shifts every
  weight by one float (YAD2K's bug).
- then, per ``[convolutional]`` in cfg order: biases[n]; if batch-normalised:
  scales[n], rolling_mean[n], rolling_variance[n]; then weights[n·c·size·size] in
  (out, in, kh, kw) order. Other layer kinds store nothing.

A file may hold only the first N conv layers (``darknet partial``, e.g. the
``darknet19_448.conv.23`` backbone: darknet's first 23 layers, i.e. 18 convs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

FLOAT = np.dtype("<f4")


@dataclass(frozen=True)
class ConvSpec:
    """What one conv layer stores: filters n, input channels c, kernel side, BN or bias."""

    filters: int
    channels: int
    size: int
    batch_normalize: bool

    @property
    def floats(self) -> int:
        """Number of float32 values this layer takes in the file."""
        n = self.filters
        return n * (4 if self.batch_normalize else 1) + n * self.channels * self.size**2


@dataclass
class ConvWeights:
    """One conv layer's values in darknet's layout.

    biases (n,); weights (n, c, k, k); scales, rolling_mean, rolling_variance (n,) or
    None when the layer has no batch norm (then biases are the conv's bias; with batch
    norm they are the BN's shift).
    """

    biases: np.ndarray
    weights: np.ndarray
    scales: np.ndarray | None = None
    rolling_mean: np.ndarray | None = None
    rolling_variance: np.ndarray | None = None

    @property
    def spec(self) -> ConvSpec:
        n, c, k, _ = self.weights.shape
        return ConvSpec(n, c, k, self.scales is not None)

    def arrays(self) -> list[np.ndarray]:
        """The arrays in file order."""
        bn = [self.scales, self.rolling_mean, self.rolling_variance]
        return [self.biases, *(bn if self.scales is not None else []), self.weights]


@dataclass
class Header:
    """The file header; ``seen`` is the number of images darknet has trained on."""

    major: int = 0
    minor: int = 2
    revision: int = 0
    seen: int = 0

    @property
    def seen_is_int64(self) -> bool:
        return self.major * 10 + self.minor >= 2 and self.major < 1000 and self.minor < 1000

    @property
    def nbytes(self) -> int:
        return 12 + (8 if self.seen_is_int64 else 4)

    def pack(self) -> bytes:
        head = np.array([self.major, self.minor, self.revision], "<i4").tobytes()
        return head + np.array([self.seen], "<i8" if self.seen_is_int64 else "<i4").tobytes()


def read_header(data: bytes, name: str) -> Header:
    """Parses the 16- or 20-byte header at the start of ``data``."""
    if len(data) < 16:
        raise ValueError(f"{name}: {len(data)} bytes is too short for a darknet weights header")
    major, minor, revision = (int(v) for v in np.frombuffer(data[:12], "<i4"))
    header = Header(major, minor, revision)
    if len(data) < header.nbytes:
        raise ValueError(
            f"{name}: {len(data)} bytes is too short for a "
            f"{major}.{minor}.{revision} header ({header.nbytes} bytes)"
        )
    header.seen = int(
        np.frombuffer(data[12 : header.nbytes], "<i8" if header.seen_is_int64 else "<i4")[0]
    )
    return header


def read_weights(
    path: str, specs: list[ConvSpec], allow_partial: bool = False
) -> tuple[Header, list[ConvWeights]]:
    """Reads a ``.weights`` file laid out for the conv layers ``specs``.

    Args:
        path: str. The file.
        specs: list of ConvSpec. The network's conv layers in cfg order.
        allow_partial: bool. Accept a file holding only the first N layers (whole
            layers only). Defaults to False.

    Returns:
        (header, layers): one ConvWeights per layer read (all of ``specs`` unless partial).

    Raises:
        ValueError: missing file; a size that does not fit ``specs`` (too long, too short
        without ``allow_partial``, or ending inside a layer), with expected and actual
        sizes in floats and bytes, checked before the file's body is read.
    """
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: {path}")
    # The size is checked against the cfg's from the header alone: a file of the wrong
    # size (or a huge one) is refused before its body is read.
    with open(path, "rb") as f:
        header = read_header(f.read(20), name)
        body = os.fstat(f.fileno()).st_size - header.nbytes
        expected = sum(spec.floats for spec in specs)
        count = _whole_layers(specs, body // FLOAT.itemsize) if allow_partial else len(specs)
        needed = sum(spec.floats for spec in specs[:count]) if count > 0 else -1
        if body != needed * FLOAT.itemsize:
            raise ValueError(_size_message(name, header, body, expected, len(specs), allow_partial))
        f.seek(header.nbytes)
        values = np.frombuffer(f.read(needed * FLOAT.itemsize), FLOAT)
    layers, offset = [], 0
    for spec in specs[:count]:
        layer, offset = _take(values, offset, spec)
        layers.append(layer)
    return header, layers


def _whole_layers(specs: list[ConvSpec], floats: int) -> int:
    """How many leading layers ``floats`` values cover exactly (-1: none, or mid-layer)."""
    total = 0
    for count, spec in enumerate(specs):
        if total == floats:
            return count
        total += spec.floats
    return len(specs) if total == floats else -1


def _size_message(name, header, body, expected, layers, partial) -> str:
    rule = " in all (a partial file must end at a layer boundary)" if partial else ""
    return (
        f"{name}: after its {header.nbytes}-byte {header.major}.{header.minor}."
        f"{header.revision} header the file has {body / FLOAT.itemsize:g} floats ({body} "
        f"bytes); the cfg's {layers} conv layers need {expected} floats "
        f"({expected * FLOAT.itemsize} bytes){rule}: wrong cfg, or a damaged file?"
    )


def _take(values: np.ndarray, offset: int, spec: ConvSpec) -> tuple[ConvWeights, int]:
    n = spec.filters
    parts = []
    for count in [n] * (4 if spec.batch_normalize else 1):
        parts.append(values[offset : offset + count].copy())
        offset += count
    count = n * spec.channels * spec.size**2
    kernel = values[offset : offset + count].reshape(n, spec.channels, spec.size, spec.size)
    biases, *bn = parts
    layer = ConvWeights(biases, kernel.copy(), *(bn if bn else [None] * 3))
    return layer, offset + count


def write_weights(path: str, layers: list[ConvWeights], header: Header | None = None) -> None:
    """Writes ``layers`` in darknet's layout; darknet (and ``read_weights``) read it back.

    Args:
        path: str. Output file (written atomically).
        layers: list of ConvWeights, in cfg order.
        header: Header or None. Defaults to 0.2.0 with an int64 ``seen`` of 0.
    """
    from detector.utils.atomic import atomic_path

    header = header or Header()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.pack())
        for layer in layers:
            for array in layer.arrays():
                f.write(np.ascontiguousarray(array, FLOAT).tobytes())
