"""The record type every dataset reader produces, and the dataset that holds them.

Units: every box here is `xyxy` in pixels of the *original* image, continuous coordinates
(a box covering pixel columns 3..5 inclusive is x1=3, x2=6), as in COCO.
"""

import os
from dataclasses import dataclass, replace

import numpy as np


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


@dataclass
class Dataset:
    """All records of one split plus the class bookkeeping.

    Attributes:
        records: list[Record]. One per image, images without objects included (negatives).
        names: list[str]. Class names; index = contiguous class index.
        category_ids: list[int]. Contiguous class index -> the dataset's own category id.
        annotation_file: str | None. COCO json to evaluate against, when the format has one.
        problems: dict[str, int]. Counts of dropped / clipped things by reason,
            e.g. {"box_zero_size": 3}; reasons with a zero count are absent.
    """

    records: list[Record]
    names: list[str]
    category_ids: list[int]
    annotation_file: str | None
    problems: dict[str, int]


def drop_missing_images(dataset: Dataset) -> Dataset:
    """Return `dataset` without the records whose image file does not exist.

    Only checks existence (no decoding), so it is cheap enough to run once before training;
    the dropped records are counted under `problems["image_missing"]`.
    """
    kept = [r for r in dataset.records if os.path.isfile(r.path)]
    problems = dict(dataset.problems)
    missing = len(dataset.records) - len(kept)
    if missing:
        problems["image_missing"] = problems.get("image_missing", 0) + missing
    return replace(dataset, records=kept, problems=problems)
