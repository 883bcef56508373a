"""A darknet cfg's ``[region]`` options (YOLOv2's detection layer) and their mapping
onto our loss config (``loss.*``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from detector.darknet.section import Section


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
        if min(values) <= 0:
            raise ValueError(f"{s.where()}: anchors= must be > 0 (grid cells)")
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
            "box": "mse",
        }


def region_spec(sections: list[Section]) -> RegionSpec | None:
    """The cfg's ``[region]`` (the last one), or None for a cfg without one."""
    regions = [s for s in sections if s.kind == "region"]
    return RegionSpec.from_section(regions[-1]) if regions else None


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
