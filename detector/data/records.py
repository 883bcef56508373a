"""The record type every dataset reader produces, the `Records` sequence of one split, and
the dataset that holds them.

Units: every box here is `xyxy` in pixels of the *original* image, continuous coordinates
(a box covering pixel columns 3..5 inclusive is x1=3, x2=6), as in COCO.
"""

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from detector.data.files import read_image

# What a reader or the image check may count, and what happened to the thing counted.
# Every reader uses these names (see `detector.data.policy`).
PROBLEM_REASONS = {
    "image_missing": "image file not found: image skipped",
    "image_not_an_image": "file is not an image (unknown signature): image skipped",
    "image_unreadable": "image file that cannot be decoded: image skipped",
    "image_truncated": "truncated image file: image skipped",
    "image_too_large": "image header over data.max_pixels pixels: image skipped, not decoded",
    "image_exif_rotated": "EXIF orientation applied: labels read on the displayed image, kept",
    "image_grayscale": "grayscale image: converted to RGB, kept",
    "image_rgba": "image with alpha channel: converted to RGB, kept",
    "image_16bit": "16-bit image: converted to 8-bit, kept",
    "image_size_mismatch": "image size differs from its annotation: boxes rescaled, kept",
    "annotation_malformed": "malformed annotation entry, line or file: skipped",
    "annotation_unknown_image": "annotation of an image id that does not exist: dropped",
    "class_unknown": "unknown class name, category id or class index: box dropped",
    "box_not_finite": "box coordinate NaN or infinite: box dropped",
    "box_zero_size": "box with zero or negative width or height: box dropped",
    "box_outside_image": "box wholly outside its image: box dropped",
    "box_clipped": "box partly outside its image: clipped, kept",
}
MAX_EXAMPLES = 3


class Problems(Counter):
    """Counts of data problems by reason (see `PROBLEM_REASONS`), with a few examples.

    A `Counter`, so it compares equal to a plain dict of the counts; `examples` maps a
    reason to up to `MAX_EXAMPLES` short descriptions ("file: detail").
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, example: str | None = None, count: int = 1) -> None:
        """Count `count` occurrences of `reason`; remember `example` while there is room."""
        if reason not in PROBLEM_REASONS:
            raise KeyError(f"unknown problem reason {reason!r}")
        if count <= 0:
            return
        self[reason] += count
        if example is not None:
            shown = self.examples.setdefault(reason, [])
            if len(shown) < MAX_EXAMPLES:
                shown.append(example)

    def merge(self, other: "Counter") -> "Problems":
        """Adds `other`'s counts and examples to this one; returns self."""
        for reason, count in other.items():
            self.add(reason, None, count)
            shown = self.examples.setdefault(reason, [])
            for example in getattr(other, "examples", {}).get(reason, []):
                if len(shown) < MAX_EXAMPLES:
                    shown.append(example)
        return self

    def report(self, name: str) -> str:
        """Human-readable lines, one per reason, with its meaning and examples."""
        if not self:
            return f"{name}: no data problems"
        lines = [f"{name}: data problems (handled, nothing else was lost):"]
        for reason in PROBLEM_REASONS:
            if self[reason]:
                lines.append(f"  {reason:<26} {self[reason]:>7}  {PROBLEM_REASONS[reason]}")
                for example in self.examples.get(reason, []):
                    lines.append(f"      e.g. {example}")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on numpy arrays is ambiguous
class Record:
    """One annotated image.

    Attributes:
        image_id: int. The dataset's own image id (the COCO image id).
        path: str. Absolute path of the image file.
        height: int. Original image height, pixels.
        width: int. Original image width, pixels.
        boxes: float32 (N, 4). Objects, xyxy in original pixels.
        classes: int32 (N,). Contiguous class index 0..C-1 of each box.
        ignore: float32 (M, 4). Crowd / ignore regions, xyxy in original pixels; (0, 4) if none.
    """

    image_id: int
    path: str
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    ignore: np.ndarray


@runtime_checkable
class Records(Protocol):
    """The records of one split: a read-only sequence of `Record`, plus what the anchors,
    the plots and the input pipelines ask of a whole split.

    Implementations: `RecordList` (records in memory, images at their paths) and
    `detector.data.tfrecord.PackedRecords` (records and image bytes in TFRecord shards,
    parsed on first iteration). Index i means the same record in every method. Both are
    cheap to ``len`` and to pickle.
    """

    @property
    def packed(self) -> bool:
        """True when the images are in TFRecord shards (`PackedRecords`): the input
        pipelines then stream the shards instead of opening each record's path."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Record]: ...

    def __getitem__(self, index: int) -> Record: ...

    def image_ids(self) -> np.ndarray:
        """int64 (N,): each record's image id, in record order."""
        ...

    def box_table(self) -> np.ndarray:
        """float32 (K, 4): width, height of every box and width, height of its image, in
        image pixels; rows record by record in record order (what `anchors.box_shapes`
        clusters)."""
        ...

    def read_images(self, indices: Iterable[int]) -> dict[int, np.ndarray]:
        """{i: uint8 (H, W, 3) RGB image} of the records at `indices`."""
        ...


class RecordList(Sequence[Record]):
    """`Records` held in a list; each image is read from its record's path.

    Slicing gives a `RecordList`.
    """

    def __init__(self, records: Iterable[Record] = ()):
        self._records = list(records)

    @property
    def packed(self) -> bool:
        return False

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return RecordList(self._records[index])
        return self._records[index]

    def __repr__(self) -> str:
        return f"RecordList({len(self)} records)"

    def image_ids(self) -> np.ndarray:
        return np.array([r.image_id for r in self._records], np.int64)

    def box_table(self) -> np.ndarray:
        sizes = [r.boxes[:, 2:] - r.boxes[:, :2] for r in self._records]
        images = [np.tile([r.width, r.height], (len(r.boxes), 1)) for r in self._records]
        rows = [np.column_stack(pair) for pair in zip(sizes, images, strict=True)]
        return (np.concatenate(rows) if rows else np.zeros((0, 4))).astype(np.float32)

    def read_images(self, indices: Iterable[int]) -> dict[int, np.ndarray]:
        return {int(i): read_image(self._records[int(i)].path) for i in indices}


@dataclass
class Dataset:
    """All records of one split plus the class bookkeeping.

    Attributes:
        records: Records. One per image, images without objects included (negatives); a
            list or tuple of `Record` given here becomes a `RecordList`.
        names: list[str]. Class names; index = contiguous class index.
        category_ids: list[int]. Contiguous class index -> the dataset's own category id.
        annotation_file: str | None. COCO json to evaluate against, when the format has one.
        problems: Problems. Counts of dropped / clipped / converted things by reason,
            e.g. {"box_zero_size": 3}, with examples; reasons with a zero count are absent.
        coco_keep: int array | None. For COCO data: the indices of the json's
            `annotations` that survived the reader's checks, so evaluation scores against
            exactly those; None when every annotation was kept or there is no json.
    """

    records: Records
    names: list[str]
    category_ids: list[int]
    annotation_file: str | None
    problems: Problems = field(default_factory=Problems)
    coco_keep: np.ndarray | None = None

    def __post_init__(self):
        if isinstance(self.records, list | tuple):
            self.records = RecordList(self.records)
