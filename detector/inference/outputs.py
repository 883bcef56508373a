"""What ``predict.py`` writes, and its run over a source.

Outputs, all under one folder: the images with their detections drawn (a video's frames
as an mp4 of the same name), ``labels/<stem>.txt`` in YOLO format (``class cx cy w h
conf``, normalised to the image; a video frame's stem carries its number; an image whose
stem another label would have too keeps its extension,
`detector.inference.sources.label_names`), and ``predictions.json``, COCO results with the
checkpoint's category ids and, when a dataset is given, its image ids matched by file
name (else each entry carries ``file_name``). Every file is written under a temporary name
and renamed once complete (an mp4 when its video ends), as `detector.utils.atomic` does.
"""

import contextlib
import itertools
import os
import sys
import time
from collections import Counter
from collections.abc import Callable

import cv2
import numpy as np

from detector.data.records import Dataset
from detector.inference.detector import Detector
from detector.inference.results import Result
from detector.inference.sources import Frame, Source, batched
from detector.utils.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from detector.utils.boxes import xyxy_to_cxcywh

VIDEO_FPS = 30.0  # when a video or webcam does not say


def output_dir(parent: str, name: str = "predict") -> str:
    """A new folder ``parent/predict``, else ``predict-2``, ``predict-3``, ... (created)."""
    for k in itertools.count(1):
        path = os.path.join(parent, name if k == 1 else f"{name}-{k}")
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue


def run_folder(checkpoint: str) -> str:
    """The run a checkpoint belongs to: the folder holding it (a file or a SavedModel)."""
    return os.path.dirname(os.path.abspath(os.path.normpath(checkpoint)))


def yolo_lines(result: Result) -> list[str]:
    """A result as YOLO label lines: ``class cx cy w h conf``, boxes normalised to the
    original image."""
    height, width = result.orig_shape
    boxes = xyxy_to_cxcywh(result.boxes) / np.array([width, height, width, height])
    return [
        f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {s:.5f}"
        for c, (cx, cy, w, h), s in zip(result.class_ids, boxes, result.scores, strict=True)
    ]


def summary(result: Result, names: list[str]) -> str:
    """``2 dog, 1 cat`` (in class order), or ``no detections``."""
    counts = Counter(int(c) for c in result.class_ids)
    return ", ".join(f"{counts[c]} {names[c]}" for c in sorted(counts)) or "no detections"


class ImageIds:
    """A dataset's image ids by file: the same path first, else the same file name when
    only one image of the dataset has it."""

    def __init__(self, dataset: Dataset):
        self.by_path = {os.path.realpath(r.path): int(r.image_id) for r in dataset.records}
        names = Counter(os.path.basename(r.path) for r in dataset.records)
        self.by_name = {
            os.path.basename(r.path): int(r.image_id)
            for r in dataset.records
            if names[os.path.basename(r.path)] == 1
        }

    def get(self, path: str | None) -> int | None:
        if path is None:
            return None
        found = self.by_path.get(os.path.realpath(path))
        return found if found is not None else self.by_name.get(os.path.basename(path))


class Writers:
    """The files of one prediction run under `folder` (see the module docstring).

    Args:
        folder: str. Output folder.
        save_img: bool. Drawn images / videos.
        save_txt: bool. YOLO labels.
        save_json: bool. ``predictions.json``.
        image_ids: ImageIds or None. Match images to a dataset's ids in the JSON.
        fps: float or None. Frame rate of the video written for a video source.
    """

    def __init__(self, folder, save_img, save_txt, save_json, image_ids=None, fps=None):
        self.folder, self.save_img, self.save_txt = folder, save_img, save_txt
        self.results = [] if save_json else None
        self.image_ids, self.fps = image_ids, fps or VIDEO_FPS
        self.videos: dict[str, cv2.VideoWriter] = {}
        self._pending = contextlib.ExitStack()  # the videos' atomic writes
        self.images = self.unmatched = 0

    def write(self, frame: Frame, result: Result) -> None:
        if self.save_img:
            self._image(frame, result.plot(frame.image))
        if self.save_txt:
            path = os.path.join(self.folder, "labels", frame.stem + ".txt")
            atomic_write_text(path, "".join(line + "\n" for line in yolo_lines(result)))
        if self.results is not None:
            self._coco(frame, result)

    def _image(self, frame: Frame, drawn: np.ndarray) -> None:
        bgr = cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)
        if not frame.video:
            path = os.path.join(self.folder, frame.name)
            try:
                ok, data = cv2.imencode(os.path.splitext(path)[1], bgr)
            except cv2.error:
                ok = False
            if not ok:
                print(f"warning: {path}: could not encode the drawn image", file=sys.stderr)
                return
            atomic_write_bytes(path, data.tobytes())
            return
        if frame.name not in self.videos:  # renamed into place once complete (close)
            path = os.path.join(self.folder, os.path.splitext(frame.name)[0] + ".mp4")
            tmp = self._pending.enter_context(atomic_path(path, ".mp4"))
            size = (bgr.shape[1], bgr.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.videos[frame.name] = cv2.VideoWriter(tmp, fourcc, self.fps, size)
        self.videos[frame.name].write(bgr)

    def _coco(self, frame: Frame, result: Result) -> None:
        self.images += 1
        if self.image_ids is None:  # a running image id, and the file to tell which
            name = frame.stem if frame.video else frame.name
            self.results += [dict(e, file_name=name) for e in result.to_coco(self.images)]
            return
        image_id = self.image_ids.get(frame.path)
        if image_id is None:
            self.unmatched += 1
        else:
            self.results += result.to_coco(image_id)

    def close(self) -> None:
        """Finishes the videos (renamed into place) and writes ``predictions.json``."""
        for video in self.videos.values():
            video.release()
        self._pending.close()
        if self.results is not None:
            atomic_write_json(os.path.join(self.folder, "predictions.json"), self.results)


def progress(frame: Frame, source: Source) -> str:
    """Where a frame is in its source: ``(3/10) ``, ``(frame 3/120) ``, or nothing for
    a single image."""
    if source.is_video:
        return f"(frame {frame.index}{f'/{source.total}' if source.total else ''}) "
    return f"({frame.index}/{source.total}) " if (source.total or 0) > 1 else ""


def run_predictions(
    detector: Detector,
    source: Source,
    writers: Writers,
    settings: dict,
    batch_size: int = 16,
    log: Callable[[str], None] = print,
) -> dict:
    """Predicts every frame of `source` in batches and writes the outputs; logs one line
    per image (``(3/10) a.jpg: 2 dog, 1 cat 12.3 ms``) and the throughput at the end.
    An unreadable file is reported on stderr and skipped. The outputs written so far
    are finished even when the run is interrupted.

    Args:
        settings: `Detector.predict`'s conf, iou, max_det, agnostic, classes, input_size.
        batch_size: int. Images per forward pass (1 for a webcam). Defaults to 16.

    Returns:
        {"images": predicted, "skipped": unreadable, "seconds": wall time}.
    """
    counts = Counter()

    def readable():
        for frame in source:
            if frame.image is not None:
                yield frame
                continue
            counts["skipped"] += 1
            print(f"warning: {frame.path}: {frame.error}; skipped", file=sys.stderr)

    start = time.perf_counter()
    size = 1 if source.kind == "webcam" else batch_size
    try:
        for frames in batched(readable(), size):
            images = [f.image for f in frames]
            results = detector.predict(images, batch_size=len(frames), **settings)
            for frame, result in zip(frames, results, strict=True):
                result.path = frame.path
                line = f"{summary(result, detector.names)} {result.time_ms:.1f} ms"
                log(f"{progress(frame, source)}{frame.name}: {line}")
                writers.write(frame, result)
                counts["images"] += 1
                counts["ms"] += result.time_ms
    finally:
        writers.close()
    seconds = time.perf_counter() - start
    log(throughput(counts, seconds, "frame" if source.is_video else "image", writers))
    return {"images": counts["images"], "skipped": counts["skipped"], "seconds": seconds}


def throughput(counts: Counter, seconds: float, unit: str, writers: Writers) -> str:
    """The closing line: how many `unit`s ("image" or "frame"), how fast, what was
    skipped, where the outputs are."""
    n = counts["images"]
    parts = [
        f"{n} {unit}{'' if n == 1 else 's'} in {seconds:.1f} s "
        f"({n / max(seconds, 1e-9):.1f} {unit}s/s, "
        f"{counts['ms'] / max(n, 1):.1f} ms each in the detector)"
    ]
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} unreadable skipped")
    if writers.unmatched:
        parts.append(f"{writers.unmatched} images not in the dataset left out of the JSON")
    return "; ".join(parts) + f"; results in {writers.folder}"
