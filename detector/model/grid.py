"""The YOLOv2 grid and its box codec: raw darknet outputs <-> boxes, in ``keras.ops``.

Units, here and wherever these functions are used:

- raw: darknet's ``tx, ty, tw, th`` per anchor of each cell, unbounded.
- anchors: (A, 2) anchor ``w, h`` in grid cells (stride-32 units), darknet's convention.
- boxes: ``cx, cy, w, h`` normalised to the network input (0..1 across the image).

A predictor at grid row ``r``, column ``c`` with anchor ``(p_w, p_h)`` on an
``S_h x S_w`` grid reads (darknet's ``get_region_box``)::

    cx = (sigmoid(tx) + c) / S_w        w = p_w · exp(tw) / S_w
    cy = (sigmoid(ty) + r) / S_h        h = p_h · exp(th) / S_h

with ``tw, th`` clipped to ±``LOG_SIZE_CLIP`` before ``exp`` so that an extreme logit
cannot overflow. Both functions take and return (B, S_h, S_w, A, ·) grids: the cell of
a box is its position in the grid, not a value, so ``encode_raw`` inverts ``decode_raw``.
They accept numpy arrays or tensors and compute in float32.

Keras is imported inside the functions, not here: the numpy-only data tools
(``detector.model.targets``, ``detector.model.anchors``) take ``STRIDE`` from this module and must
not pay for importing TensorFlow.
"""

STRIDE = 32  # pixels of network input per grid cell
LOG_SIZE_CLIP = 10.0  # |tw|, |th| cap before exp: e^10 ≈ 22000 anchors
OFFSET_EPS = 1e-6  # in-cell offsets are kept in [eps, 1 - eps] so their logit is finite
SIZE_EPS = 1e-9  # box/anchor size ratios below it are raised to it before the log


def grid_offsets(grid_h, grid_w):
    """Cell column and row indices, shaped (1, S_h, S_w, 1) each, float32."""
    from keras import ops

    cols = ops.cast(ops.arange(grid_w), "float32")
    rows = ops.cast(ops.arange(grid_h), "float32")
    col_grid = ops.broadcast_to(cols[None, :], (grid_h, grid_w))
    row_grid = ops.broadcast_to(rows[:, None], (grid_h, grid_w))
    return col_grid[None, :, :, None], row_grid[None, :, :, None]


def cell_grid(grid):
    """The cells and the size of a (B, S_h, S_w, A, ·) grid.

    Returns:
        cell: (1, S_h, S_w, 1, 2) float32 ``col, row`` of every cell: its top-left
            corner, in grid cells.
        size: (2,) float32 ``S_w, S_h``: multiply a normalised ``x, y`` by it to get
            grid cells.
    """
    from keras import ops

    shape = ops.shape(grid)
    grid_h, grid_w = shape[1], shape[2]
    col, row = grid_offsets(grid_h, grid_w)
    cell = ops.concatenate([col[..., None], row[..., None]], axis=-1)
    return cell, ops.cast(ops.stack([grid_w, grid_h]), "float32")


def decode_raw(raw, anchors):
    """Raw darknet box outputs to normalised boxes (see the module docstring).

    Args:
        raw: (B, S_h, S_w, A, K), K >= 4. Channels 0..3 are ``tx, ty, tw, th``;
            any others (objectness, classes) are ignored.
        anchors: (A, 2). Anchor ``w, h`` in grid cells.

    Returns:
        (B, S_h, S_w, A, 4) float32 ``cx, cy, w, h`` normalised to the input (0..1).
    """
    from keras import ops

    t = ops.cast(raw[..., 0:4], "float32")
    cell, size = cell_grid(t)
    xy = (ops.sigmoid(t[..., 0:2]) + cell) / size
    twh = ops.clip(t[..., 2:4], -LOG_SIZE_CLIP, LOG_SIZE_CLIP)
    wh = ops.exp(twh) * ops.cast(anchors, "float32") / size
    return ops.concatenate([xy, wh], axis=-1)


def encode_raw(boxes, anchors):
    """Normalised boxes, each at its grid position, to raw darknet ``tx, ty, tw, th``.

    The inverse of ``decode_raw``: ``tx = logit(cx · S_w - col)``, ``tw = log(w · S_w / p_w)``
    (and likewise for y, h). Offsets are clipped to ``[OFFSET_EPS, 1 - OFFSET_EPS]``
    and size ratios raised to ``SIZE_EPS``, so empty (all-zero) slots encode to finite
    values. ``tw, th`` beyond ±``LOG_SIZE_CLIP`` do not round-trip (``decode_raw``
    clips them).

    Args:
        boxes: (B, S_h, S_w, A, 4) ``cx, cy, w, h`` normalised to the input (0..1);
            the box at ``[b, r, c, a]`` is read relative to cell (r, c) and anchor a.
        anchors: (A, 2). Anchor ``w, h`` in grid cells.

    Returns:
        (B, S_h, S_w, A, 4) float32 raw ``tx, ty, tw, th``.
    """
    from keras import ops

    boxes = ops.cast(boxes, "float32")
    cell, size = cell_grid(boxes)
    offset = ops.clip(boxes[..., 0:2] * size - cell, OFFSET_EPS, 1.0 - OFFSET_EPS)
    txy = ops.log(offset) - ops.log1p(-offset)
    ratio = boxes[..., 2:4] * size / ops.cast(anchors, "float32")
    twh = ops.log(ops.maximum(ratio, SIZE_EPS))
    return ops.concatenate([txy, twh], axis=-1)
