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

from detector.data.image_checks import (
    MAX_PIXELS,
    PILLOW_REFUSES,
    ImageTooLarge,
    plain_jpeg_size,
    too_large,
)

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


def image_size(path: str, max_pixels: int | None = None) -> tuple[int, int] | None:
    """(height, width) as displayed (EXIF orientation applied), from the file's header
    without decoding it, or None if unreadable. With `max_pixels`, a header declaring
    more pixels raises `ImageTooLarge` (`detector.data.image_checks`)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format == "TIFF":  # recent Pillow reports a TIFF's size oriented
                width, height = image.tag_v2.get(256, width), image.tag_v2.get(257, height)
            if _orientation(image) in TRANSPOSED:
                width, height = height, width
    except Image.DecompressionBombError:
        if max_pixels is not None:
            raise too_large(path, None, max_pixels) from None
        return None
    except _PIL_ERRORS:
        return None
    if max_pixels is not None and height * width > max_pixels:
        raise too_large(path, (height, width), max_pixels)
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


def _imdecode(data: bytes, flags: int) -> np.ndarray | None:
    """`cv2.imdecode` as stored (orientation ignored), or None if it does not decode."""
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    return None if image is None or image.size == 0 else image


def _displayed(image: np.ndarray, data: bytes, orientation: int) -> np.ndarray:
    """The stored `image` decoded from `data` as displayed under `orientation`."""
    if orientation == 1 or data.startswith(_SELF_ORIENTING):
        return image
    return np.ascontiguousarray(apply_orientation(image, orientation))


def decode_oriented(data: bytes, flags: int) -> tuple[np.ndarray | None, int]:
    """`cv2.imdecode(data, flags)` as displayed, and the EXIF orientation applied.

    Returns:
        (image (H, W[, C]) with H, W as displayed, or None if it does not decode;
        orientation 1..8).
    """
    image = _imdecode(data, flags)
    if image is None:
        return None, 1
    orientation = exif_orientation(data)
    return _displayed(image, data, orientation), orientation


def checked_orientation(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> int:
    """The EXIF orientation 1..8 of an image file's bytes (1 when absent or unreadable),
    after refusing a header that declares over `max_pixels` pixels (`ImageTooLarge`
    naming `name`): `check_pixels` and `exif_orientation` from one parse of the header,
    a plain JPEG's (`plain_jpeg_size`) without Pillow."""
    plain = plain_jpeg_size(data)
    if plain is not None:
        (height, width), orientation = plain, 1
        if height * width > PILLOW_REFUSES:  # where Pillow would refuse it
            raise too_large(name, None, max_pixels)
    else:
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                orientation = _orientation(image)
        except Image.DecompressionBombError:
            raise too_large(name, None, max_pixels) from None
        except _PIL_ERRORS:  # OpenCV may still decode it: as `check_pixels`, no limit known
            return 1
    if height * width > max_pixels:
        raise too_large(name, (height, width), max_pixels)
    return orientation


def read_image(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB as displayed (EXIF orientation
    applied); ValueError naming `path` if unreadable, `ImageTooLarge` (a ValueError) if
    its header declares over `max_pixels` pixels (then it is not decoded)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    try:
        return decode_reduced(data, path, 1, max_pixels)
    except ImageTooLarge:
        raise
    except ValueError:
        raise ValueError(
            f"{path}: cannot read image (missing, unreadable or not an image)"
        ) from None


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file's bytes (e.g. a packed record's) as `read_image` does, the
    pixel limit included; ValueError naming `name` (`ImageTooLarge` over the limit)."""
    return decode_reduced(data, name, 1, max_pixels)


# cv2.imread flags decoding at 1/k of the size (JPEG: by DCT scaling, a fraction of the cost)
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
_REDUCED[8] = cv2.IMREAD_REDUCED_COLOR_8


def decode_reduced(
    data: bytes, name: str, factor: int = 1, max_pixels: int = MAX_PIXELS, bgr: bool = False
) -> np.ndarray:
    """Decode as `read_image` does (RGB, EXIF orientation applied, pixel limit checked
    before decoding) at 1/`factor` of the size, `factor` in 1, 2, 4, 8 (sides rounded
    up); ValueError naming `name`. `bgr`: OpenCV's channel order instead, for a caller
    that converts later anyway (the training augmentation). Defaults to False."""
    orientation = checked_orientation(data, name, max_pixels)
    image = _imdecode(data, _REDUCED[factor])
    if image is None:
        raise ValueError(f"{name}: cannot decode image")
    image = _displayed(image, data, orientation)
    return image if bgr else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
