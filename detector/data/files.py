"""Image files: listing the images of a split, reading an image's size cheaply, decoding."""

import os

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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


def image_size(path: str) -> tuple[int, int] | None:
    """(height, width) from the file's header without decoding it, or None if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return (height, width) if height > 0 and width > 0 else None


def read_image(path: str) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB; ValueError naming `path` if unreadable."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot read image (missing, unreadable or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode an image file's bytes as `read_image` does; ValueError naming `name`."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{name}: cannot decode image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
