"""Image folders: listing the images of a split and reading an image's size cheaply."""

import os

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
