"""Darknet's inference-side arithmetic: its letterbox, and its region-layer output layout.

``darknet_letterbox`` reproduces ``letterbox_image`` (with darknet's own bilinear
``resize_image``, align-corners style, in float32) so a converted model can be fed
exactly what ``darknet detector test`` feeds the network. ``darknet_region_output``
turns our raw grid into the array darknet's ``[region]`` layer leaves in ``l.output``.
Darknet's letterbox placement differs from ours (`detector.utils.boxes.letterbox_geometry`):
integer arithmetic on the network's (w, h), hence `darknet_letterbox_geometry`.
"""

from __future__ import annotations

import numpy as np

GREY = np.float32(0.5)  # darknet fills the letterbox border with 0.5 (127.5 in 0..255)


def darknet_letterbox_geometry(height: int, width: int, size: int | tuple[int, int]):
    """Darknet's letterbox placement of a (height, width) image in a (w, h) input
    (``letterbox_image``'s integer arithmetic).

    Args:
        height, width: int. Image size in pixels.
        size: int or (w, h). Network input in pixels.

    Returns:
        (new_w, new_h, left, top): the resized image's size and its offset, pixels.
    """
    net_w, net_h = (size, size) if isinstance(size, int) else size
    if np.float32(net_w) / np.float32(width) < np.float32(net_h) / np.float32(height):
        new_w, new_h = net_w, (height * net_w) // width
    else:
        new_w, new_h = (width * net_h) // height, net_h
    return new_w, new_h, (net_w - new_w) // 2, (net_h - new_h) // 2


def darknet_resize(image: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """Darknet's ``resize_image``: separable bilinear with corners aligned, float32.

    Args:
        image: float32 (H, W, C).
        new_w, new_h: int. Output size in pixels.

    Returns:
        float32 (new_h, new_w, C). Like darknet, the last row comes from ``(1 - dy)`` times
        one source row only (darknet skips the second term there).
    """
    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    part = np.empty((height, new_w, image.shape[2]), np.float32)
    part[:, new_w - 1] = image[:, width - 1]
    if width > 1 and new_w > 1:
        w_scale = np.float32(width - 1) / np.float32(new_w - 1)
        sx = np.arange(new_w - 1, dtype=np.float32) * w_scale
        ix = sx.astype(np.int64)
        dx = (sx - ix.astype(np.float32))[None, :, None]
        part[:, : new_w - 1] = (1 - dx) * image[:, ix] + dx * image[
            :, np.minimum(ix + 1, width - 1)
        ]
    elif new_w > 1:
        part[:] = image[:, :1]
    h_scale = np.float32(height - 1) / np.float32(max(new_h - 1, 1))
    sy = np.arange(new_h, dtype=np.float32) * h_scale
    iy = sy.astype(np.int64)
    dy = (sy - iy.astype(np.float32))[:, None, None]
    out = (1 - dy) * part[iy]
    if height > 1:
        rows = np.arange(new_h - 1)
        nxt = np.minimum(iy[rows] + 1, height - 1)
        out[rows] = out[rows] + dy[rows] * part[nxt]
    return out


def darknet_letterbox(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Darknet's ``letterbox_image`` for a uint8 RGB image, as the model's input.

    Keeps the aspect ratio (darknet's integer arithmetic), resizes with
    ``darknet_resize`` on pixel / 255 as darknet does, centres it, fills the rest with
    0.5 grey, and returns it times 255 (the model's ``Rescaling(1/255)`` undoes that).

    Args:
        image: uint8 (H, W, 3) RGB.
        size: int or (w, h). Network input in pixels.

    Returns:
        float32 (h, w, 3), values 0..255 (border 127.5).
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"darknet_letterbox: expected (H, W, C), got shape {image.shape}")
    net_w, net_h = (size, size) if isinstance(size, int) else size
    height, width = image.shape[:2]
    new_w, new_h, left, top = darknet_letterbox_geometry(height, width, (net_w, net_h))
    pixels = (image.astype(np.float64) / 255.0).astype(np.float32)
    canvas = np.full((net_h, net_w, image.shape[2]), GREY, np.float32)
    canvas[top : top + new_h, left : left + new_w] = darknet_resize(pixels, new_w, new_h)
    return canvas * np.float32(255.0)


def darknet_region_output(raw: np.ndarray) -> np.ndarray:
    """Our raw grid as darknet's region layer output: (B, A, 5 + C, H, W).

    Darknet's ``forward_region_layer`` applies the logistic to x, y and objectness and a
    softmax over the C class scores of each anchor, in place, on the conv output whose
    NCHW channel ``a·(5 + C) + e`` is our ``raw[..., a, e]``. So ``l.output`` for image b
    is this array's ``[b]`` flattened (index ``((a·(5+C) + e)·H + y)·W + x``); w and h
    stay raw (darknet exponentiates them only when it makes boxes).

    Args:
        raw: (B, H, W, A, 5 + C) model output.
    """
    raw = np.asarray(raw, np.float32)
    out = raw.copy()
    out[..., [0, 1, 4]] = 1.0 / (1.0 + np.exp(-raw[..., [0, 1, 4]]))
    logits = raw[..., 5:] - raw[..., 5:].max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    out[..., 5:] = exp / exp.sum(axis=-1, keepdims=True)
    return np.transpose(out, (0, 3, 4, 1, 2))
