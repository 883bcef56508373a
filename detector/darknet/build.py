"""Darknet cfg -> Keras functional model, the same kind ``build_inference_model`` makes.

Layer names follow ``detector.model.network``: the k-th ``[convolutional]`` (1-based, cfg order)
is ``conv_k``, with ``bn_k`` and ``leaky_k`` (or ``relu_k`` / ``logistic_k``); other layers
carry darknet's 0-based layer index (``pool_1``, ``route_25``, ``reorg_27``). A conv
without batch norm has a bias. The model ends in ``YoloHead`` ("yolo_head").
"""

from __future__ import annotations

import keras

from detector.darknet.cfg import BUILDABLE, LayerInfo, layer_table, read_cfg
from detector.darknet.region import region_spec
from detector.model.layers import SpaceToDepth, YoloHead

# Keras BN computes (x - mean) / sqrt(var + eps); darknet (x - mean) / (sqrt(var) + 1e-6).
# The weight loader converts the stored variance (transfer.set_conv_weights), so any eps is
# exact; 1e-5 is our own builder's, so checkpoints move between the two unchanged.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.97
LEAKY_SLOPE = 0.1


def build_from_cfg(
    cfg: str,
    input_size: int | None = None,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    letterbox: bool = True,
    backbone_only: bool = False,
) -> keras.Model:
    """Builds the network a darknet cfg describes.

    Args:
        cfg: str. Path of a ``.cfg`` file, or the cfg text.
        input_size: int or None. Input side in pixels recorded in the head (and used to
            check shapes); None = [net] width. The model itself takes any size.
        class_names: list of str or None. Defaults to "class_0".."class_{C-1}".
        category_ids: list of int or None. Dataset ids of the classes. Defaults to 1..C.
        letterbox: bool. Recorded in the head: images are letterboxed, as darknet's
            ``detector test``/``valid`` do. Defaults to True.
        backbone_only: bool. Stop before the first layer that is not a conv, max-pool,
            route or reorg (a classifier's ``[avgpool]``, or ``[region]``) and return
            the feature model. Defaults to False.

    Returns:
        images (B, H, W, C_net) float pixels 0..255 (RGB) -> raw grid (B, H/32, W/32, A, 5 + C)
        (the flat map is ``A·(5 + C)`` channels in darknet's order, anchor-major), or the
        last feature map (B, h, w, c) with ``backbone_only``.

    Raises:
        ValueError: an unsupported section or option, or a cfg without ``[region]``.
    """
    sections = read_cfg(cfg)
    rows = layer_table(sections, input_size)
    net_w = sections[0].get_int("width", 0)
    size = int(input_size or net_w)
    channels = sections[0].get_int("channels", 3)
    images = keras.Input(shape=(None, None, channels), name="images")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(images)
    outputs = _body(rows, x)
    stop = rows[len(outputs)] if len(outputs) < len(rows) else None
    stem = sections[0].source.removesuffix(".cfg")
    name = "darknet_" + "".join(ch if ch.isalnum() else "_" for ch in stem)
    if backbone_only:
        return keras.Model(images, outputs[-1], name=f"{name}_backbone")
    if stop is None or stop.kind != "region":
        found = f"layer {stop.index} [{stop.section.kind}]" if stop else "none"
        raise ValueError(
            f"{sections[0].source}: a detector needs [region] after the last "
            f"conv (found {found}); use backbone_only=True for a backbone"
        )
    region = region_spec(sections)
    names = class_names or [f"class_{i}" for i in range(region.classes)]
    if len(names) != region.classes:
        raise ValueError(f"{len(names)} class names for classes={region.classes} in [region]")
    head = YoloHead(region.anchors, names, size, category_ids, letterbox, name="yolo_head")
    return keras.Model(images, head(outputs[-1]), name=name)


def _body(rows: list[LayerInfo], x) -> list:
    """The outputs of the cfg's layers up to the first one that is not a conv, max-pool,
    route or reorg (``[region]``, ``[avgpool]``...), in order."""
    outputs: list = []
    convs = 0
    for row in rows:
        if row.kind not in BUILDABLE - {"region"}:
            break
        source = outputs[-1] if outputs else x
        if row.kind == "conv":
            convs += 1
            outputs.append(_conv(source, row, convs))
        elif row.kind == "max":
            pool = keras.layers.MaxPooling2D(
                row.size, row.stride, padding="same", name=f"pool_{row.index}"
            )
            outputs.append(pool(source))
        elif row.kind == "reorg":
            reorg = SpaceToDepth(row.stride, order="darknet", name=f"reorg_{row.index}")
            outputs.append(reorg(source))
        else:
            outputs.append(_route([outputs[i] for i in row.sources], row.index))
    return outputs


def _conv(x, row: LayerInfo, k: int):
    """Conv (+ BN) (+ activation) with darknet's symmetric padding."""
    padding = "valid"
    if row.pad and row.stride == 1 and 2 * row.pad == row.size - 1:
        padding = "same"
    elif row.pad:
        x = keras.layers.ZeroPadding2D(row.pad, name=f"pad_{k}")(x)
    conv = keras.layers.Conv2D(
        row.filters,
        row.size,
        row.stride,
        padding=padding,
        use_bias=not row.batch_normalize,
        name=f"conv_{k}",
    )
    x = conv(x)
    if row.batch_normalize:
        x = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"bn_{k}"
        )(x)
    if row.activation == "leaky":
        x = keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"leaky_{k}")(x)
    elif row.activation == "relu":
        x = keras.layers.ReLU(name=f"relu_{k}")(x)
    elif row.activation == "logistic":
        x = keras.layers.Activation("sigmoid", name=f"logistic_{k}")(x)
    return x


def _route(tensors: list, index: int):
    """Darknet's [route]: one layer passes through; several are concatenated in order."""
    if len(tensors) == 1:
        return tensors[0]
    return keras.layers.Concatenate(name=f"route_{index}")(tensors)
