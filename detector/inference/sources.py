"""Where the images to predict come from: files, folders, globs, lists, videos, webcams.

`open_source(SOURCE)` turns the command line's SOURCE into a `Source`, an iterable of
`Frame`: the image (uint8 (H, W, 3) RGB, files read with their EXIF orientation applied)
or, for a file that cannot be read, the reason, so that one bad file never ends a run.
`as_inputs` does the same for the Python API's arguments (paths and arrays).
"""

import glob
import os
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from detector.data.files import IMAGE_EXTENSIONS, list_images, read_image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
GLOB_CHARACTERS = "*?["
READERS = 4  # threads decoding image files ahead of the model (cv2 releases the GIL)


@dataclass
class Frame:
    """One image of a source.

    Attributes:
        name: str. Its outputs' path relative to the output folder: the image's path
            relative to the source's folder ("sub/a.jpg"), or the video's file name.
        index: int. 1-based position in the source (a video's frame number).
        image: uint8 (H, W, 3) RGB, or None when it could not be read.
        path: str or None. The file it came from (the video for a frame; None for a
            webcam).
        error: str or None. Why it could not be read.
        video: bool. A frame of a video or webcam. Defaults to False.
        label_name: str or None. Its label file's name without ".txt" when the name
            without extension would be another image's too ("a.jpg" beside "a.png").
    """

    name: str
    index: int
    image: np.ndarray | None
    path: str | None
    error: str | None = None
    video: bool = False
    label_name: str | None = None

    @property
    def stem(self) -> str:
        """The name without extension, a video frame's with its number ("clip_12"): the
        name of its label file unless `label_name` says otherwise."""
        if self.label_name is not None:
            return self.label_name
        stem = os.path.splitext(self.name)[0]
        return f"{stem}_{self.index}" if self.video else stem


@dataclass
class Source:
    """What `open_source` opened.

    Attributes:
        kind: str. "image", "images" (a folder, glob or list), "video" or "webcam".
        frames: iterable of Frame, iterated once.
        total: int or None. How many frames, when known.
        fps: float or None. Frames per second of a video or webcam.
    """

    kind: str
    frames: Iterable[Frame]
    total: int | None = None
    fps: float | None = None

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    @property
    def is_video(self) -> bool:
        return self.kind in ("video", "webcam")


def open_source(source: str) -> Source:
    """The frames SOURCE names; ValueError naming it when there is nothing to read.

    - an integer ("0"): that webcam;
    - a folder: its image files (by extension), recursively, sorted;
    - a pattern with ``*``, ``?`` or ``[``: the image files it matches (``**`` recurses);
    - a ``.txt`` file: one image path per line (blank and ``#`` lines skipped), relative
      paths against the list's folder;
    - a video file (by extension): its frames;
    - any other file: that image.
    """
    source = os.fspath(source)
    if source.strip().isdigit():
        return webcam_source(int(source))
    if os.path.isdir(source):
        names = list_images(source)
        return image_source("images", source, [os.path.join(source, n) for n in names], names)
    if any(c in source for c in GLOB_CHARACTERS) and not os.path.exists(source):
        paths = sorted(p for p in glob.glob(source, recursive=True) if is_image_file(p))
        return image_source("images", source, paths, relative_names(paths))
    if not os.path.isfile(source):
        raise ValueError(f"SOURCE: not found: {source}")
    extension = os.path.splitext(source)[1].lower()
    if extension in VIDEO_EXTENSIONS:
        return video_source(source)
    if extension == ".txt":
        paths = read_list(source)
        return image_source("images", source, paths, relative_names(paths))
    return image_source("image", source, [source], [os.path.basename(source)])


def is_image_file(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS)


def relative_names(paths: list[str]) -> list[str]:
    """Output names of files from anywhere: paths relative to their deepest common folder
    (so names stay apart), a single file's name."""
    if len(paths) <= 1:
        return [os.path.basename(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return [os.path.relpath(os.path.abspath(p), root) for p in paths]


def read_list(path: str) -> list[str]:
    """The image paths of a list file, relative ones joined to the list's folder."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is no path
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"SOURCE: cannot read list file {path} ({type(error).__name__})") from None
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line and line[0] != "#"]
    others = [n for n, line in numbered if not line.lower().endswith(IMAGE_EXTENSIONS)]
    if others:  # not a list of images: named by line, never quoted
        raise ValueError(
            f"SOURCE: {path}: {len(others)} of its {len(numbered)} lines are not image paths "
            f"(the first: line {others[0]}); expected one image file a line"
        )
    return [os.path.join(folder, line) for _, line in numbered]


def image_source(kind: str, source: str, paths: list[str], names: list[str]) -> Source:
    """The Source of image files; ValueError if there are none."""
    if not paths:
        raise ValueError(f"SOURCE: no image files in {source}")
    return Source(kind, read_frames(paths, names), total=len(paths))


def label_names(names: list[str]) -> list[str | None]:
    """Each image's label name when its name without extension would be another label's
    too, else None (the stem: "a"). "a.jpg" beside "a.png" get "a.jpg" and "a.png"; a
    stem that then meets a kept name gives way in turn ("a.jpg.png" gets "a.jpg.png"),
    so no label file overwrites another (names are distinct paths: they never clash)."""
    stems = [os.path.splitext(name)[0] for name in names]
    whole: set[int] = set()
    while True:
        used = Counter(names[i] if i in whole else stems[i] for i in range(len(names)))
        clashing = {i for i in range(len(names)) if i not in whole and used[stems[i]] > 1}
        if not clashing:
            return [name if i in whole else None for i, name in enumerate(names)]
        whole |= clashing


def read_frames(paths: list[str], names: list[str]) -> Iterator[Frame]:
    """Frames of image files in order, decoded by `READERS` threads a few files ahead."""
    labels = label_names(names)
    with ThreadPoolExecutor(READERS) as pool:
        pending = deque()
        for index, (path, name, label) in enumerate(zip(paths, names, labels, strict=True), 1):
            pending.append((name, index, path, label, pool.submit(_read, path)))
            if len(pending) > 2 * READERS:
                yield _frame(*pending.popleft())
        while pending:
            yield _frame(*pending.popleft())


def _read(path: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return read_image(path), None
    except (ValueError, OSError, cv2.error):
        return None, "cannot read image (missing, unreadable or not an image)"


def _frame(name: str, index: int, path: str, label: str | None, future) -> Frame:
    image, error = future.result()
    return Frame(name, index, image, path, error, label_name=label)


def video_source(path: str) -> Source:
    """The frames of a video file; ValueError if OpenCV cannot open it."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ValueError(f"SOURCE: cannot open video {path}")
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fps = capture.get(cv2.CAP_PROP_FPS) or None
    frames = video_frames(capture, os.path.basename(path), path, total)
    return Source("video", frames, total, fps)


def webcam_source(index: int) -> Source:
    """The frames of webcam `index` until it stops (or Ctrl-C); ValueError if it does
    not open."""
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        raise ValueError(f"SOURCE: cannot open webcam {index}")
    fps = capture.get(cv2.CAP_PROP_FPS) or None
    return Source("webcam", video_frames(capture, f"webcam{index}.mp4", None), None, fps)


def video_frames(
    capture: cv2.VideoCapture, name: str, path: str | None, total: int | None = None
) -> Iterator[Frame]:
    """The frames an OpenCV capture reads, as RGB; it is released at the end. A video
    that ends before the `total` frames its header announces is said on stderr (a cut or
    damaged file), its frames read so far kept."""
    try:
        index = 0
        while True:
            ok, image = capture.read()
            if not ok:
                if total and index < total:
                    print(
                        f"warning: {path}: the video ended after {index} of its {total} "
                        "frames (the file is cut or damaged)",
                        file=sys.stderr,
                    )
                return
            index += 1
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            yield Frame(name, index, rgb, path, video=True)
    finally:
        capture.release()


def as_rgb(image, bgr: bool = False) -> np.ndarray:
    """An image array checked and made uint8 (H, W, 3) RGB: grayscale (H, W) is
    repeated, BGR (OpenCV's order) reversed when `bgr`."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (pixels 0..255), got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"expected an image of shape (H, W, 3), got {image.shape}")
    return image[..., ::-1] if bgr else image


def as_inputs(sources, bgr: bool = False) -> Iterator[tuple[np.ndarray, str | None]]:
    """(uint8 (H, W, 3) RGB image, path or None) for each image of `sources`, read
    lazily (see `Detector.predict`)."""
    one_array = isinstance(sources, np.ndarray) and sources.ndim in (2, 3)
    if isinstance(sources, str | os.PathLike) or one_array:
        sources = [sources]
    for source in sources:
        if isinstance(source, str | os.PathLike):
            path = os.fspath(source)
            yield read_image(path), path
        else:
            yield as_rgb(source, bgr), None


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last one shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
