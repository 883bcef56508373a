"""One section of a darknet cfg (``[convolutional]``, ``[region]``, ...): its options and
their checked reading, with the file, line and key named in every message."""

from __future__ import annotations

import math
from dataclasses import dataclass

from detector.darknet import limits
from detector.utils.safe_yaml import short


@dataclass
class Section:
    """One ``[kind]`` block: its options as strings, and where it starts (for messages):
    its line, and its index among the sections (0 = ``[net]``, so section k is darknet's
    layer k - 1)."""

    kind: str
    options: dict[str, str]
    line: int
    source: str = "cfg"
    index: int = 0

    def where(self) -> str:
        return f"{self.source}:{self.line} section {self.index} [{self.kind}]"

    def get_int(self, key: str, default: int) -> int:
        """The option as an int (darknet truncates "3.5" to 3), checked against
        `limits.INT_RANGES` for this kind of section."""
        value = int(self._number(key, default, int))
        return limits.check_int(self.where(), self.kind, key, value)

    def get_float(self, key: str, default: float) -> float:
        value = float(self._number(key, default, float))
        if not math.isfinite(value):
            raise ValueError(f"{self.where()}: {key}={self.options[key]!r} is not finite")
        return value

    def get_floats(self, key: str) -> list[float]:
        text = self.options.get(key, "")
        try:
            values = [float(v) for v in text.split(",") if v]
        except ValueError:
            values = [math.nan]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{self.where()}: {key}={short(text)} is not a list of numbers")
        return values

    def _number(self, key, default, kind):
        if key not in self.options:
            return default
        try:
            return kind(float(self.options[key])) if kind is int else kind(self.options[key])
        except (ValueError, OverflowError):  # "nan" and "inf" are no int
            raise ValueError(
                f"{self.where()}: {key}={short(self.options[key])} is not a number"
            ) from None
