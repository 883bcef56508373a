"""What can be told about an image file without decoding it: its pixel count (from the
header, against the decompression-bomb limit) and whether its JPEG / PNG structure ends.

A 60 KB PNG can declare 20000x20000 pixels: decoding it takes 1.2 GB. Every decode goes
after `check_pixels`, which reads the header only (Pillow), or its twin
`detector.data.files.checked_orientation`, which also takes the EXIF orientation from the
same parse of the header (decoders parse it once). The limit is `data.max_pixels`
(`MAX_PIXELS` by default, Pillow's own warning threshold); Pillow itself refuses to open a
header over twice its threshold, so such a file counts as over any allowed limit.

`is_truncated` walks a JPEG's segments (SOI .. EOI, the entropy-coded data scanned for
the next marker) or a PNG's chunks (signature .. IEND) and says whether the file stops
before the end marker. Bytes after the end marker are allowed: phones append a video to
a "motion photo" JPEG, and decoders stop at EOI / IEND.
"""

import io
import re
import struct

from PIL import Image

MAX_PIXELS = 89_478_485  # Pillow's Image.MAX_IMAGE_PIXELS: (1024·1024·1024 // 4 // 3)
PILLOW_REFUSES = 2 * MAX_PIXELS  # Pillow's DecompressionBombError threshold
_HEADER_ERRORS = (OSError, ValueError, SyntaxError, struct.error)
# A marker after entropy-coded data: 0xFF then neither a stuffed 0x00, a fill 0xFF, nor
# a restart marker RST0..RST7 (which sit inside the data).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length
_FRAME = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn (not DHT, JPG, DAC)
_NOT_PLAIN = {0xE1, 0xFF, 0xD8, 0xD9, *_STANDALONE}  # APP1 (EXIF, XMP), fill, odd markers


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than allowed (never decoded)."""


def too_large(name: str, size: tuple[int, int] | None, max_pixels: int) -> ImageTooLarge:
    """The error for image `name` of (height, width) `size` (None: over Pillow's limit)."""
    if size is None:
        found = f"over {PILLOW_REFUSES} pixels"
    else:
        found = f"{size[1]}x{size[0]} = {size[0] * size[1]} pixels"
    return ImageTooLarge(
        f"{name}: {found}, over the limit of {max_pixels} (data.max_pixels); not decoded"
    )


def header_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) as stored, from the header of an image file's bytes.

    Raises:
        Image.DecompressionBombError: Pillow refuses the header (over `PILLOW_REFUSES`).
    Returns None when Pillow cannot read the header (OpenCV may still decode the file).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except _HEADER_ERRORS:  # not DecompressionBombError: that one goes to the caller
        return None
    return height, width


def plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the frame header (SOFn) of a JPEG whose header holds no APP1
    segment, else None.

    Without APP1 there is neither EXIF nor XMP, so no orientation: such a file is as
    stored, and this walk of its markers gives what Pillow's header parse would, for a
    fraction of the cost (the training pipeline parses every image's header). None for
    anything else (APP1, fill bytes, no frame header before the scan, not a JPEG): the
    caller asks Pillow.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, end, size = 2, len(data), None
    while pos + 4 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the header is over
            return size
        if marker in _NOT_PLAIN:
            return None
        if marker in _FRAME:
            if size is not None or pos + 9 > end:
                return None
            size = (
                int.from_bytes(data[pos + 5 : pos + 7]),
                int.from_bytes(data[pos + 7 : pos + 9]),
            )
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4])
    return None


def check_pixels(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> None:
    """Raises `ImageTooLarge` naming `name` if the header declares over `max_pixels`."""
    try:
        size = header_size(data)
    except Image.DecompressionBombError:
        raise too_large(name, None, max_pixels) from None
    if size is not None and size[0] * size[1] > max_pixels:
        raise too_large(name, size, max_pixels)


def is_truncated(data: bytes, kind: str) -> bool:
    """Whether a JPEG or PNG file ends before its end marker (other kinds: False)."""
    if kind == "jpeg":
        return not _jpeg_ends(data)
    if kind == "png":
        return not _png_ends(data)
    return False


def _jpeg_ends(data: bytes) -> bool:
    """Whether the segments after SOI reach an EOI marker."""
    pos, end = 2, len(data)
    while pos + 2 <= end:
        if data[pos] != 0xFF or data[pos + 1] == 0xFF:  # stray or fill bytes: skip them
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                return False
            pos = found.start()
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > end:
            return False
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                return False
            pos = found.start()
    return False


def _png_ends(data: bytes) -> bool:
    """Whether the chunks after the signature reach an IEND chunk."""
    pos = 8
    while pos + 8 <= len(data):
        if data[pos + 4 : pos + 8] == b"IEND":
            return True
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
    return False
