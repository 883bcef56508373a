"""Image files: listing the images of a split, reading an image's size cheaply, decoding.

One orientation convention everywhere: an image is what a viewer displays, its EXIF
orientation applied (as Ultralytics, labelling tools and browsers do), so labels refer to
the displayed image. `image_size` gives the displayed size from the header; `read_image`
and `decode_image` give the displayed pixels. The orientation tag is read with Pillow
(`ImageOps.exif_transpose`'s meaning, XMP ``tiff:Orientation`` included) and applied here,
not left to OpenCV, whose handling differs between versions and formats.
"""

import io
import os
import struct

import cv2
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 = as stored, 2..8 = flipped and/or rotated
TRANSPOSED = (5, 6, 7, 8)  # orientations whose displayed width is the stored height
# OpenCV's TIFF decoder applies the orientation itself, whatever the flags.
_SELF_ORIENTING = (b"II*\x00", b"MM\x00*")
_PIL_ERRORS = (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError)


def list_images(folder: str) -> list[str]:
    """Image files under `folder` (recursively), as sorted paths relative to it.

    An image is a file with one of `IMAGE_EXTENSIONS` (any case); other files are not
    listed. Whether the content really is an image is `detector.data.policy`'s business.
    """
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def _orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 of an opened image; 1 when absent or not a valid value.

    The base class's `getexif` reads the tags found before the pixel data: PNG's own
    would decode the whole image to look for a late eXIf chunk.
    """
    try:
        value = Image.Image.getexif(image).get(ORIENTATION_TAG, 1)
    except _PIL_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def exif_orientation(data: bytes) -> int:
    """EXIF orientation 1..8 of an image file's bytes (1 when absent or unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _orientation(image)
    except _PIL_ERRORS:
        return 1


def image_size(path: str) -> tuple[int, int] | None:
    """(height, width) as displayed (EXIF orientation applied), from the file's header
    without decoding it, or None if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format == "TIFF":  # recent Pillow reports a TIFF's size oriented
                width, height = image.tag_v2.get(256, width), image.tag_v2.get(257, height)
            if _orientation(image) in TRANSPOSED:
                width, height = height, width
    except _PIL_ERRORS:
        return None
    return (height, width) if height > 0 and width > 0 else None


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """The stored image (H, W, ...) as displayed under EXIF `orientation` (a view)."""
    swapped = image.swapaxes(0, 1)
    return {
        2: image[:, ::-1],  # mirrored left-right
        3: image[::-1, ::-1],  # rotated 180
        4: image[::-1],  # mirrored top-bottom
        5: swapped,  # transposed
        6: swapped[:, ::-1],  # rotated 90 clockwise
        7: swapped[::-1, ::-1],  # transversed
        8: swapped[::-1],  # rotated 90 counter-clockwise
    }.get(orientation, image)


def decode_oriented(data: bytes, flags: int) -> tuple[np.ndarray | None, int]:
    """`cv2.imdecode(data, flags)` as displayed, and the EXIF orientation applied.

    Returns:
        (image (H, W[, C]) with H, W as displayed, or None if it does not decode;
        orientation 1..8).
    """
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        return None, 1
    orientation = exif_orientation(data)
    if not data.startswith(_SELF_ORIENTING):
        image = np.ascontiguousarray(apply_orientation(image, orientation))
    return image, orientation


def read_image(path: str) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB as displayed (EXIF orientation
    applied); ValueError naming `path` if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    image, _ = decode_oriented(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot read image (missing, unreadable or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode an image file's bytes as `read_image` does; ValueError naming `name`."""
    image, _ = decode_oriented(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{name}: cannot decode image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
